"""Resume across world sizes without Ray: a checkpoint written by 2 gloo workers, resumed by 3 and by 1, reads the
same global batches (sample keys per step) and gives the uninterrupted 2-worker run's losses (group norm: no
per-rank statistics; summation order aside)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from cluster.run_config import load_run_config
from pretrain.trainer import Trainer

STEPS, CUT = 9, 5  # 300 samples / 48 = 7 steps per epoch: the resumed runs cross into epoch 1


def _cfg(src: Path):
    return load_run_config(None, [
        "model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "model.norm=group",
        "data.image_size=16", f"data.train={src}", "data.lanes=6", "data.shuffle_buffer=100", "data.loader_workers=0",
        "batch_size=48", f"steps={STEPS}", "log_every=1", f"checkpoint_every={CUT}", "log_batch_keys=true",
        "cluster.workers=[1, 3]", "deterministic=true", "optim.name=adamw", "optim.lr=0.001",
        "optim.warmup_fraction=0"])


class SharedDirHooks:
    """Every rank writes its part of checkpoint s into run_dir/checkpoint_s (as Ray merges them); rank 0 keeps logs."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.logs = run_dir, []

    def log(self, metrics):
        self.logs.append(metrics)

    def checkpoint(self, write, metrics):
        d = self.run_dir / f"checkpoint_{metrics['step']:08d}"
        d.mkdir(parents=True, exist_ok=True)
        write(d)


def _rank(rank: int, world: int, port: int, src: str, run_dir: str, resume: str | None, out) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    hooks = SharedDirHooks(Path(run_dir))
    trainer = Trainer(_cfg(Path(src)), rank=rank, world_size=world, device=torch.device("cpu"), hooks=hooks)
    trainer.fit(Path(resume) if resume else None)
    if rank == 0:
        out.put({m["step"]: (m["loss"], m["batch_keys"][-1]) for m in hooks.logs})
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _run(world: int, src: Path, run_dir: Path, resume: Path | None = None) -> dict[int, tuple[float, str]]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, str(src), str(run_dir), resume and str(resume), out))
             for r in range(world)]
    for p in procs:
        p.start()
    logs = out.get(timeout=300)
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return logs


def test_two_worker_checkpoint_resumes_with_three_and_with_one(small_shards, tmp_path):
    full = _run(2, small_shards, tmp_path / "w2")
    ckpt = tmp_path / "w2" / f"checkpoint_{CUT:08d}"
    assert sorted(p.name for p in ckpt.iterdir()) == ["rng-rank0.pt", "rng-rank1.pt", "state.pt"]
    assert sorted(full) == list(range(1, STEPS + 1))
    assert len({h for _, h in full.values()}) == STEPS               # every step its own batch
    for world in (3, 1):
        resumed = _run(world, small_shards, tmp_path / f"w{world}", resume=ckpt)
        assert sorted(resumed) == list(range(CUT + 1, STEPS + 1)), world
        for step, (loss, keys) in resumed.items():
            assert keys == full[step][1], (world, step)              # the same global batch
            assert loss == pytest.approx(full[step][0], rel=2e-5, abs=1e-5), (world, step)
    after = [full[s][0] for s in range(CUT + 1, STEPS + 1)]
    assert max(after) - min(after) > 1e-3                            # each step's loss is its own: not vacuous


def test_rank_rng_is_rederived_when_the_world_size_changed(small_shards, tmp_path):
    """A rank whose saved RNG state cannot carry over (another world size wrote it) seeds from (seed, step, rank);
    with the same world size the saved state is restored."""
    from pretrain.checkpoint import seed_rank_rng

    cfg = _cfg(small_shards).model_copy(update={"steps": 2, "checkpoint_every": 2})
    first = Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=SharedDirHooks(tmp_path))
    first.fit()
    ckpt = tmp_path / "checkpoint_00000002"
    saved = torch.load(ckpt / "rng-rank0.pt", weights_only=True)["torch"]
    same = Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=SharedDirHooks(tmp_path / "a"))
    same.restore(ckpt)
    assert torch.equal(torch.get_rng_state(), saved)
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    state = torch.load(moved / "state.pt", weights_only=True)
    state["extra"]["world_size"] = 2                                  # as if two workers had written it
    torch.save(state, moved / "state.pt")
    other = Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=SharedDirHooks(tmp_path / "b"))
    other.restore(moved)
    seed_rank_rng(cfg.seed, 2, 0)
    expected = torch.get_rng_state()
    other.restore(moved)
    assert torch.equal(torch.get_rng_state(), expected) and not torch.equal(expected, saved)
