"""No host-device synchronisation in the training hot path: between log steps, bigbatch's training code (pretrain/)
reads no tensor value on the host — on a GPU each such read (``.item()``, ``float()``, ``bool()``, ``.nonzero()``,
…) waits for every queued kernel. Counted on CPU by wrapping those Tensor methods; metrics are read once per log
step, and the logged values are the ones the step computed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from generative_utils import run_gloo

import pretrain
from cluster.run_config import load_run_config
from pretrain.trainer import LocalHooks, Trainer

PRETRAIN = str(Path(pretrain.__file__).resolve().parent)
HOST_READS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__float__", "__int__", "__index__")


class HostReads:
    """Records (tag, method, file:line) for every host read of a tensor made from a file under pretrain/."""

    def __init__(self, setattr_=setattr) -> None:
        self.sites: list[tuple[str, str, str]] = []
        self.tag = "setup"
        for name in HOST_READS:
            setattr_(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, original):
        def read(t, *args, **kwargs):
            code = sys._getframe(1).f_code
            if code.co_filename.startswith(PRETRAIN):
                self.sites.append((self.tag, name, f"{Path(code.co_filename).name}:{sys._getframe(1).f_lineno}"))
            return original(t, *args, **kwargs)
        return read

    def tags(self) -> set[str]:
        return {tag for tag, _, _ in self.sites}


def tagging(method, reads: HostReads, seen: list[dict[str, float]]):
    """``method.train_step`` that tags reads by step and keeps the float value of every metric it returned."""
    step_fn = method.train_step

    def train_step(batch, step):
        reads.tag = f"step {step}"
        out = step_fn(batch, step)
        reads.tag = f"after step {step}"
        seen.append({k: float(v) for k, v in out.items()})  # the test's own read (not under pretrain/)
        return out
    return train_step


CASES = {
    "ranking": ["loss.name=ranking"],
    "ranking-blockwise": ["loss.name=ranking-blockwise", "loss.block_size=24"],  # 64 views: 3×3 tiles
    "binary-all-pairs": ["loss.name=binary", "loss.all_pairs=true"],
    "binary": ["loss.name=binary", "loss.num_negatives=2"],
    "spectral": ["loss.name=spectral"],
    "vae": ["method=vae", "vae.learn_sigma=true", "vae.decoder_width=16"],
    "gan": ["method=gan", "gan.n_critic=2", "gan.gen_width=16"],
    "wgan": ["method=gan", "gan.loss=wgan", "gan.n_critic=2", "model.norm=none", "gan.gen_width=16"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_host_reads_between_log_steps(case, tmp_path, digits_shards, monkeypatch):
    steps = 4
    cfg = load_run_config(None, ["model.encoder=bb_convnet_tiny", "model.proj_hidden=32", "data.image_size=16",
                                 f"data.train={digits_shards['train']}", "data.loader_workers=0", "batch_size=32",
                                 "cluster.workers=1", f"steps={steps}", f"log_every={steps}",
                                 f"checkpoint_every={steps}", *CASES[case]])
    hooks = LocalHooks(tmp_path, 1)
    trainer = Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=hooks)
    reads, seen = HostReads(monkeypatch.setattr), []
    trainer.method.train_step = tagging(trainer.method, reads, seen)
    trainer.fit()
    assert len(hooks.logs) == 1 and len(seen) == steps
    # every read happened at the log step (after the last step), none inside a step or between steps
    assert reads.tags() <= {f"after step {steps - 1}"}, sorted(set(reads.sites))
    logged = hooks.logs[-1]
    for key, value in seen[-1].items():
        assert logged[key] == value, key  # the step's own values, read once


def _simclr_rank(rank: int, world: int, out_dir: str) -> None:
    from pretrain.methods import build_method
    from pretrain.trainer import ddp_wrapper

    reads, seen = HostReads(), []
    report = {}
    for loss in ("ranking", "ranking-blockwise", "binary-all-pairs"):
        overrides = CASES[loss] + ["model.encoder=bb_convnet_tiny", "model.proj_hidden=32", "data.image_size=16",
                                   "data.train=digits", "batch_size=32", "cluster.workers=2"]
        torch.manual_seed(0)
        method = build_method(load_run_config(None, overrides))
        method.configure(10, torch.device("cpu"), ddp_wrapper(torch.device("cpu")))
        method.train_step = tagging(method, reads, seen)
        g = torch.Generator().manual_seed(rank)
        reads.sites.clear()
        for step in range(3):
            views = torch.randint(0, 256, (2 * 16, 3, 16, 16), dtype=torch.uint8, generator=g)
            method.train_step({"views": views}, step)
        report[loss] = sorted(set(reads.sites))
    torch.save(report, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_equal_shard_check_reads_the_host_on_the_first_step_only(tmp_path):
    """Under 2 gloo processes the gathered losses check once, on their first forward, that every rank holds as many
    rows (one all-reduce and its host read); the following steps read nothing."""
    run_gloo(_simclr_rank, 2, str(tmp_path))
    for rank in (0, 1):
        report = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for loss, sites in report.items():
            assert sites, f"{loss}: the first step's shard check was not seen (is the counter working?)"
            assert {tag for tag, _, _ in sites} == {"step 0"}, (loss, sites)
            assert all(where.startswith("distributed.py") for _, _, where in sites), (loss, sites)
