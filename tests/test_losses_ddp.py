"""The data-parallel contract: W gloo processes, each calling the loss on its shard of the batch inside a DDP-wrapped
encoder, produce the parameter gradients (temperature/bias included) of one process computing the same loss on
the whole batch — for the O(B) binary loss, of one process computing the mean of the workers' local losses."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pretrain.losses import BinaryNCE, RankingNCE, SpectralContrastive

pytestmark = pytest.mark.slow

N_LOCAL, D_IN, D_OUT = 6, 10, 8
CASES = {
    "ranking": lambda: RankingNCE(0.2),
    "ranking-blockwise": lambda: RankingNCE(0.2, block_size=5),
    "binary-all-pairs": lambda: BinaryNCE(all_pairs=True, init_bias=-1.0),
    "binary-shift": lambda: BinaryNCE(num_negatives=2),
    "spectral": lambda: SpectralContrastive(0.7),
}


class Net(nn.Module):
    """A tiny encoder + the loss inside one module, as in SimCLR's DDP wrapper (learnable t/b averaged by DDP)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, D_OUT))
        self.loss = loss

    def forward(self, x1, x2):
        return self.loss(self.enc(x1), self.enc(x2))


def global_batch(world: int):
    """Rank r's rows are drawn with scale (1 + r) and offset r: shards that look nothing alike."""
    g = torch.Generator().manual_seed(42)
    parts = [(torch.randn(2, N_LOCAL, D_IN, generator=g) * (1 + r) + r) for r in range(world)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in module.named_parameters()}


def single_process(name: str, world: int):
    net = Net(CASES[name]())
    x1, x2 = global_batch(world)
    if name == "binary-shift":  # the O(B) loss: the mean of the local losses over the same partition
        loss = torch.stack([net(a, b) for a, b in zip(x1.chunk(world), x2.chunk(world), strict=True)]).mean()
    else:
        loss = net(x1, x2)
    loss.backward()
    return float(loss), grads(net)


def worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    out = {}
    for name in CASES:
        net = Net(CASES[name]())
        ddp = nn.parallel.DistributedDataParallel(net)
        x1, x2 = global_batch(world)
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        loss = ddp(x1[rows], x2[rows])
        loss.backward()
        value = loss.detach().clone()
        dist.all_reduce(value)
        out[name] = (float(value) / world, {k: v.numpy() for k, v in grads(net).items()})  # by value, not shm
    queue.put((rank, out))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_gradients_equal_single_process(world):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for name in CASES:
        ref_value, ref_grads = single_process(name, world)
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
