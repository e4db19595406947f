"""The data-parallel contract: W gloo processes, each calling the loss on its shard of the batch inside a DDP-wrapped
encoder, produce the parameter gradients (temperature/bias included) of one process computing the same loss on
the whole batch — for the O(B) binary loss, of one process computing the mean of the workers' local losses — with
two views per image and with four (multi-crop: two global, two local; ``loss.stacked(z, 4)``).
The processes and the reference are cluster/doctor_ddp.py's, which `bigbatch doctor` runs on users' hardware."""

from __future__ import annotations

import pytest
import torch

from cluster.doctor_ddp import (
    CASES,
    N_LOCAL,
    Net,
    ddp_contract,
    global_batch,
    grads,
    run_ranks,
    single_process,
)
from pretrain.losses import RankingNCE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("num_views", [2, 4])
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_gradients_equal_single_process(world, num_views):
    results = run_ranks(world, "gloo", num_views=num_views)
    for name in CASES:
        ref_value, ref_grads = single_process(name, world, num_views)
        for rank in range(world):
            value, got = results[rank][name]
            assert value == pytest.approx(ref_value, rel=1e-5, abs=1e-6), (name, rank)  # mean over workers = global loss
            for k in ref_grads:
                assert torch.allclose(torch.from_numpy(got[k]), ref_grads[k], rtol=1e-4, atol=1e-6), (name, rank, k)


def test_gather_without_gradient_would_fail_this_test():
    """Guard against a vacuous test: with W=2 the all-gather's backward matters — dropping it changes the gradient."""
    _, full = single_process("ranking", 2)
    net = Net(CASES["ranking"]())
    x1, x2 = global_batch(2)
    # rank 0's view with the other rank's embeddings treated as constants (a gather without gradient)
    z1, z2 = net.enc(x1), net.enc(x2)
    other = slice(N_LOCAL, 2 * N_LOCAL)
    z1 = torch.cat([z1[:N_LOCAL], z1[other].detach()])
    z2 = torch.cat([z2[:N_LOCAL], z2[other].detach()])
    RankingNCE(0.2)(z1, z2).backward()
    assert not torch.allclose(grads(net)["enc.0.weight"], full["enc.0.weight"], rtol=1e-3)


def test_contract_report_flags_a_broken_loss(monkeypatch):
    """The doctor's verdict is not vacuous: ranks whose gradients are summed instead of averaged (W× too large, what
    a missing DDP average or a doubled all-reduce gives) fail the contract."""
    import cluster.doctor_ddp as d

    def summed(world, backend):
        value, ref = single_process("ranking", world)
        return {r: {"ranking": (value, {k: (world * v).numpy() for k, v in ref.items()})} for r in range(world)}

    monkeypatch.setattr(d, "CASES", {"ranking": CASES["ranking"]})
    monkeypatch.setattr(d, "run_ranks", summed)
    report = ddp_contract(2, "gloo")
    assert report["ranking"]["ok"] is False and report["ranking"]["grad_diff"] == pytest.approx(1.0)
