"""The wall-clock budget (``budget_minutes``): the trainer stops at the first step boundary after it, writes a final
checkpoint, says why, and every DDP rank stops after the same step because rank 0's clock decides for all."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fixed_loader import FixedLoader

from cluster.process_group import free_port
from cluster.run_config import load_run_config
from pretrain import trainer as trainer_module
from pretrain.checkpoint import load_checkpoint
from pretrain.trainer import LocalHooks, Trainer, run_single_process

TINY = ["model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=16"]


def test_budget_stops_before_the_steps_with_a_final_checkpoint(tmp_path, digits_shards):
    # Checked between log steps, ever closer as the budget nears: the run stops within about a step of its 0.6 s
    # (checked at log steps only, it trained to step 1,000 here: 20 s).
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "batch_size=32", "steps=100000",
                                 "log_every=1000", "checkpoint_every=100000", "cluster.workers=1",
                                 "budget_minutes=0.01"])
    trainer, hooks = run_single_process(cfg, tmp_path)
    last = hooks.logs[-1]
    assert last["stop_reason"] == "budget" and 1 <= last["step"] == trainer.step < 1000
    assert last["total_steps"] == 100000  # the schedule keeps its length: the budget truncated it
    ckpts = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))
    assert ckpts[-1].name == f"checkpoint_{trainer.step:08d}"
    state, _ = load_checkpoint(ckpts[-1])
    assert state["step"] == trainer.step and 0.6 <= state["extra"]["train_seconds"] < 0.6 + 3.0

    # Rerunning the spent run resumes from its final checkpoint and trains no further.
    again, hooks2 = run_single_process(cfg, tmp_path)
    assert again.step == trainer.step and hooks2.logs == [
        {"step": trainer.step, "epoch": trainer.epoch, "total_steps": 100000, "stop_reason": "budget"}]


def test_schedule_by_budget_runs_the_cosine_over_the_time(tmp_path, digits_shards, monkeypatch):
    # steps=100000 is only a cap: the lr warms up over the first 10 % of the 3-s budget and ends near zero when it
    # runs out; by steps, the same budget stops the run in the warmup. Checks every 0.1 s: the 10 s of a real run
    # scaled to a 3-s budget.
    monkeypatch.setattr(trainer_module, "BUDGET_CHECK_S", 0.1)
    common = [*TINY, f"data.train={digits_shards['train']}", "batch_size=32", "steps=100000", "log_every=1",
              "checkpoint_every=100000", "cluster.workers=1", "budget_minutes=0.05", "optim.lr=0.5"]
    by_budget = run_single_process(load_run_config(None, [*common, "schedule_by=budget"]), tmp_path / "budget")[1].logs
    by_steps = run_single_process(load_run_config(None, common), tmp_path / "steps")[1].logs
    lrs = [m["lr"] for m in by_budget]
    peak = lrs.index(max(lrs))
    assert by_budget[-1]["stop_reason"] == "budget" and 20 < len(lrs) < 100000
    assert lrs[0] < 0.01 and max(lrs) > 0.45  # warmed up (over the first 10 % of the time, the loader's start too)
    assert all(a >= b - 1e-9 for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))  # then only down
    half = next(i for i, lr in enumerate(lrs) if i > peak and lr < 0.25)
    assert 0.3 < half / len(lrs) < 0.7  # at half the peak about half-way through: the steps take equal times
    assert lrs[-1] < 0.05 * 0.5
    # the progress bar's length: the step the budget runs out at, not the cap
    end = by_budget[-1]["step"]
    assert by_budget[-1]["total_steps"] == end and 0.6 * end < by_budget[len(lrs) // 2]["total_steps"] < 1.5 * end
    assert by_steps[-1]["stop_reason"] == "budget" and max(m["lr"] for m in by_steps) < 0.05 * 0.5


def test_schedule_by_budget_resumes_where_its_clock_stopped(tmp_path, digits_shards, monkeypatch):
    # A run spends its 3-s budget; resumed with 6 s it starts at half the schedule (the first 3 s are in its
    # checkpoint's train_seconds), not at a new warmup, and ends at the floor.
    monkeypatch.setattr(trainer_module, "BUDGET_CHECK_S", 0.1)
    common = [*TINY, f"data.train={digits_shards['train']}", "batch_size=32", "steps=100000", "log_every=1",
              "checkpoint_every=100000", "cluster.workers=1", "optim.lr=0.5", "schedule_by=budget",
              "optim.warmup_fraction=0"]
    first = run_single_process(load_run_config(None, [*common, "budget_minutes=0.05"]), tmp_path)[1].logs
    again = run_single_process(load_run_config(None, [*common, "budget_minutes=0.1"]), tmp_path)[1].logs
    assert first[-1]["lr"] < 0.05 and again[0]["step"] == first[-1]["step"] + 1
    assert 0.15 < again[0]["lr"] < 0.35  # cos at about half-way: 0.25
    assert again[-1]["stop_reason"] == "budget" and again[-1]["lr"] < 0.05


def test_schedule_by_budget_needs_a_budget():
    with pytest.raises(ValueError, match="schedule_by=budget: give budget_minutes"):
        load_run_config(None, [*TINY, "data.train=digits", "schedule_by=budget"])


def test_no_budget_runs_all_steps(tmp_path, digits_shards):
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "batch_size=32", "steps=3",
                                 "log_every=2", "checkpoint_every=1000", "cluster.workers=1"])
    _, hooks = run_single_process(cfg, tmp_path)
    assert [m["step"] for m in hooks.logs] == [2, 3] and hooks.logs[-1]["stop_reason"] == "steps"


STEPS = 4


def _rank(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=20))
    Trainer._loader = lambda self, epoch, start_batch: FixedLoader(self.rank, self.world_size, 16, STEPS)
    cfg = load_run_config(None, [*TINY, "model.norm=group", "data.train=fixed", "batch_size=16", f"steps={STEPS}",
                                 "log_every=1", "checkpoint_every=1000", "cluster.workers=2", "budget_minutes=1",
                                 "schedule_by=budget"])
    hooks = LocalHooks(os.devnull)
    hooks.checkpoint = lambda write, metrics: out.put(("checkpoint", rank, metrics["step"]))
    trainer = Trainer(cfg, rank=rank, world_size=2, device=torch.device("cpu"), hooks=hooks)
    # Rank 0's clock runs out after the first step; rank 1's never does. Alone, rank 1 would enter step 2's
    # all-reduce and wait there for ever (here: the 20 s gloo timeout).
    trainer._elapsed = (lambda: 0.0 if trainer.step == 0 else 1e9) if rank == 0 else (lambda: 0.0)
    last = trainer.fit()
    lr = trainer.method.optimizers["main"].param_groups[0]["lr"]  # schedule_by=budget: rank 0's clock for both
    out.put(("done", rank, last["step"], last["stop_reason"], lr))
    dist.destroy_process_group()



@pytest.mark.slow
def test_rank0_decides_for_every_rank():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    events = sorted(out.get(timeout=5) for _ in range(4))
    # the lr both ranks step with after the budget ran out: the schedule's end on rank 0's clock, not rank 1's warmup
    assert events == [("checkpoint", 0, 1), ("checkpoint", 1, 1), ("done", 0, 1, "budget", 0.0), ("done", 1, 1, "budget", 0.0)]
