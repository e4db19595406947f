"""The Ray-free training loop: resume reproduces the uninterrupted run; 2 gloo workers × N/2 = 1 worker × N."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fixed_loader import FixedLoader

from cluster.process_group import free_port
from cluster.run_config import load_run_config
from pretrain.trainer import LocalHooks, Trainer, run_single_process

TINY = ["model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=16"]


class Crash(Exception):
    pass


class CrashAfter(LocalHooks):
    """Local hooks that die right after writing the checkpoint of step ``at`` (a killed process)."""

    def __init__(self, run_dir, at):
        super().__init__(run_dir, num_to_keep=5)
        self.at = at

    def checkpoint(self, write, metrics):
        super().checkpoint(write, metrics)
        if metrics["step"] == self.at:
            raise Crash


def test_resumed_run_matches_uninterrupted(tmp_path, digits_shards):
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "batch_size=64", "steps=8",
                                 "log_every=1", "checkpoint_every=3", "cluster.workers=1", "deterministic=true"])
    _, full = run_single_process(cfg, tmp_path / "full")
    with pytest.raises(Crash):
        Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=CrashAfter(tmp_path / "cut", 6)).fit()
    _, resumed = run_single_process(cfg, tmp_path / "cut")  # picks up checkpoint_00000006
    full_loss = {m["step"]: m["loss"] for m in full.logs}
    resumed_loss = {m["step"]: m["loss"] for m in resumed.logs}
    assert sorted(resumed_loss) == [7, 8]
    for s in (7, 8):
        assert resumed_loss[s] == pytest.approx(full_loss[s], rel=1e-5, abs=1e-6)
    assert full_loss[8] != pytest.approx(full_loss[1])  # it trains


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_resume_across_an_epoch_boundary_and_the_epochs_counts(tmp_path, small_bad_shards, offset):
    """Killed right after the checkpoint of the last-but-one / last step of epoch 0 or the first of epoch 1: the
    resumed run crosses into epoch 1 with the uninterrupted run's losses. The counts logged at the end of epoch 0
    are the plan's: the undecodable samples as often as the plan reads them, the plan's repeated samples plus one
    substitute per bad read, the plan's dropped samples."""
    from conftest import planned_reads

    from data_pipeline.stream import load_source, plan_for

    cfg = load_run_config(None, [*TINY, f"data.train={small_bad_shards['train']}", "batch_size=64",
                                 "data.max_bad_fraction=0.05", "log_every=1", "checkpoint_every=1",
                                 "cluster.workers=1", "deterministic=true", "steps=1"])
    probe = Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=LocalHooks(tmp_path / "p"))
    manifest = load_source(probe.spec.source)
    spe, plan = probe.steps_per_epoch, plan_for(probe.spec, manifest, 1, 0)
    bad = planned_reads(plan, manifest, small_bad_shards["shard"], small_bad_shards["positions"])
    cfg = cfg.model_copy(update={"steps": spe + 2})
    _, full = run_single_process(cfg, tmp_path / "full")
    end0 = next(m for m in full.logs if m["step"] == spe)
    assert end0["epoch"] == 0 and full.logs[-1]["epoch"] == 1
    assert (end0["epoch_bad_samples"], end0["epoch_repeated_samples"], end0["epoch_dropped_samples"]) == \
        (bad, plan.repeated + bad, plan.dropped)
    assert bad >= len(small_bad_shards["bad"])
    assert plan.repeated > 0  # the epoch's last batch is filled up: the count is not vacuous
    cut = spe + offset
    with pytest.raises(Crash):
        Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=CrashAfter(tmp_path / "cut", cut)).fit()
    _, resumed = run_single_process(cfg, tmp_path / "cut")
    full_loss = {m["step"]: m["loss"] for m in full.logs}
    resumed_loss = {m["step"]: m["loss"] for m in resumed.logs}
    assert sorted(resumed_loss) == list(range(cut + 1, spe + 3))
    for s, loss in resumed_loss.items():
        assert loss == pytest.approx(full_loss[s], rel=1e-5, abs=1e-6), s


def test_cpu_trainer_flushes_denormals(tmp_path, digits_shards):
    """Denormal floats (|x| < 1.2e-38) are flushed to zero on CPU: they make x86 backward passes ~100x slower."""
    torch.set_flush_denormal(False)
    assert float(torch.tensor([1e-39]) * 1.0) != 0.0
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "batch_size=64", "steps=1",
                                 "cluster.workers=1"])
    Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=LocalHooks(tmp_path, 1))
    assert float(torch.tensor([1e-39]) * 1.0) == 0.0


def _first_steps(tmp_path, digits_shards, channels_last: bool):
    """Losses of 3 deterministic steps, and whether the weights and the views the method saw were NHWC."""
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "batch_size=64", "steps=3",
                                 "log_every=1", "checkpoint_every=1000", "cluster.workers=1", "deterministic=true",
                                 f"channels_last={str(channels_last).lower()}"])
    hooks = LocalHooks(tmp_path / f"cl{channels_last}")
    trainer = Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=hooks)
    seen, step = [], trainer.method.train_step

    def recording_step(batch, i):
        seen.append(batch["views"].is_contiguous(memory_format=torch.channels_last))
        return step(batch, i)

    trainer.method.train_step = recording_step
    trainer.fit()
    convs = [m.weight for m in trainer.method.modules() if isinstance(m, torch.nn.Conv2d)]
    weights_nhwc = all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    return [m["loss"] for m in hooks.logs], weights_nhwc, seen


def test_channels_last_changes_layout_not_numbers(tmp_path, digits_shards):
    """channels_last=true hands NHWC weights and views to the method; the losses match the NCHW run."""
    nhwc_loss, nhwc_weights, nhwc_views = _first_steps(tmp_path, digits_shards, True)
    nchw_loss, nchw_weights, nchw_views = _first_steps(tmp_path, digits_shards, False)
    assert nhwc_weights and nhwc_views == [True] * 3
    assert not nchw_weights and nchw_views == [False] * 3
    assert nhwc_loss == pytest.approx(nchw_loss, rel=1e-4, abs=1e-5)
    assert nhwc_loss[-1] != pytest.approx(nhwc_loss[0], rel=1e-3)


# -- 2 workers × N/2 against 1 worker × N ------------------------------------------------------------------
GLOBAL, STEPS = 32, 4


def _fixed_loader(self, epoch, start_batch):
    return FixedLoader(self.rank, self.world_size, GLOBAL, STEPS)


def _worker_trajectory(rank, world, port, loss_name, out):
    """A spawned process of its own: replacing the Trainer's loader there lasts as long as that process."""
    Trainer._loader = _fixed_loader
    _trajectory(rank, world, port, loss_name, out)


def _trajectory(rank, world, port, loss_name, out):
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = load_run_config(None, [*TINY, "model.norm=group", "data.train=fixed", f"batch_size={GLOBAL}",
                                 f"steps={STEPS}", "log_every=1", "checkpoint_every=1000",
                                 f"cluster.workers={world}", f"loss.name={loss_name}", "optim.name=adamw",
                                 "optim.lr=0.01", "optim.warmup_fraction=0"])
    hooks = LocalHooks(os.devnull)
    hooks.checkpoint = lambda write, metrics: None
    # Trainer seeds rank r with seed·1000 + r: rank 0 builds the same initial weights whatever W, and DDP
    # broadcasts rank 0's weights to the others.
    trainer = Trainer(cfg, rank=rank, world_size=world, device=torch.device("cpu"), hooks=hooks)
    trainer.fit()
    if rank == 0:
        out.put([m["loss"] for m in hooks.logs])
    if world > 1:
        dist.destroy_process_group()



@pytest.mark.parametrize("loss_name", ["ranking", "spectral"])
def test_two_workers_match_one(loss_name, monkeypatch):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    monkeypatch.setattr(Trainer, "_loader", _fixed_loader)  # undone after the test: later Trainers read real data
    _trajectory(0, 1, 0, loss_name, out)
    single = out.get()
    port = free_port()
    procs = [ctx.Process(target=_worker_trajectory, args=(r, 2, port, loss_name, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    double = out.get()
    assert len(single) == len(double) == STEPS
    assert double == pytest.approx(single, rel=1e-4, abs=1e-5)
    assert single[-1] != pytest.approx(single[0], rel=1e-3)


def test_multi_crop_run_trains(tmp_path, digits_shards):
    """data.local_views: the method gets L local views of local_size px per image with its global views, and the
    multi-positive loss goes down."""
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "batch_size=64", "steps=12",
                                 "log_every=1", "checkpoint_every=1000", "cluster.workers=1", "deterministic=true",
                                 "data.local_views=3", "data.local_size=8", "data.local_scale=[0.1, 0.3]",
                                 "optim.name=adamw", "optim.lr=0.003", "optim.warmup_fraction=0"])
    hooks = LocalHooks(tmp_path)
    trainer = Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=hooks)
    shapes, step = [], trainer.method.train_step

    def recording_step(batch, i):
        shapes.append((tuple(batch["views"].shape), tuple(batch["local_views"].shape)))
        return step(batch, i)

    trainer.method.train_step = recording_step
    trainer.fit()
    assert shapes == [((2 * 64, 3, 16, 16), (3 * 64, 3, 8, 8))] * 12
    losses = [m["loss"] for m in hooks.logs]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
