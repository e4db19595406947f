"""The main job under Ray Train (embedded local Ray, 2 CPU workers): a run, a killed worker restarted by Ray from the
last checkpoint, and a stopped run resumed by rerunning its name — both reaching the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import zero_images

from cluster.launch import run_pretrain
from cluster.run_config import load_run_config

pytestmark = pytest.mark.slow

STEPS = 16


def _cfg(tmp: Path, name: str, shards, *extra: str):
    """A fifth of the digits with two undecodable images (small_bad_shards): 16 steps cross two epoch boundaries."""
    return load_run_config(None, [
        "model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=32",
        f"data.train={shards['train']}", "data.max_bad_fraction=0.05", "batch_size=64", f"steps={STEPS}", "log_every=1",
        "checkpoint_every=4", "eval.probe=false", "deterministic=true", f"cluster.storage_path={tmp}",
        f"name={name}", *extra])


def _losses(run_dir: Path, attempt: int | None = None) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "loss" in m and (attempt is None or m["attempt"] == attempt):
            out[m["step"]] = m["loss"]
    return out


def _registered_checkpoints(run_dir: Path) -> int:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return len(json.loads(snapshot.read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return 0


def _kill_worker_when(run_dir: Path, min_step: int, rank: int, timeout: float = 240) -> int:
    """Wait until the run logged ``min_step`` and Ray registered a checkpoint, then SIGKILL worker ``rank``.

    (A checkpoint Ray has persisted but not yet registered when its worker group dies is not used on restart.)"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = _losses(run_dir) if (run_dir / "metrics.jsonl").exists() else {}
        workers = json.loads((run_dir / "workers.json").read_text()) if (run_dir / "workers.json").exists() else {}
        if steps and max(steps) >= min_step and str(rank) in workers and _registered_checkpoints(run_dir):
            pid = workers[str(rank)]["pid"]
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir} never reached step {min_step}")


def _run_in_thread(cfg):
    box = {}

    def target():
        try:
            box["run_dir"] = run_pretrain(cfg, show_progress=False)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t, box


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory, small_bad_shards, digits_shards):
    tmp = tmp_path_factory.mktemp("ray_runs")
    cfg = _cfg(tmp, "reference", small_bad_shards, "eval.probe=true", "eval.every_k_checkpoints=2",
               f"data.probe_train={digits_shards['train']}", f"data.probe_test={digits_shards['holdout']}",
               "eval.baselines=[pixels]", "cluster.num_to_keep=3")
    # three kept (test_run_directory counts them); the periodic probes read pins of their checkpoints, so a late
    # task is not lost to pruning (tests/test_probe_pins.py)
    run_dir = run_pretrain(cfg, show_progress=False)
    return tmp, run_dir, _losses(run_dir)


def test_run_directory(reference):
    _, run_dir, losses = reference
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["restarts"] == 0 and summary["final"]["step"] == STEPS
    assert sorted(summary["workers"]) == ["0", "1"]
    assert (run_dir / "config.yaml").exists() and list((run_dir / "tb").iterdir())
    assert len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) == 3  # num_to_keep
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    periodic = [m for m in events if m.get("event") == "probe" and "where" in m]
    assert sorted(m["step"] for m in periodic) == [8, 16]  # every 2nd of the checkpoints at 4, 8, 12, 16
    probe = json.loads((run_dir / "probe.json").read_text())
    assert 0.3 < probe["method"]["top1"] <= 1 and probe["baselines"]["pixels"]["top1"] > 0.9
    assert probe["step"] == STEPS and probe["checkpoint"].startswith(str(run_dir / "checkpoint_"))
    # the probes ran as Ray tasks, not in the driver
    assert summary["driver"]["pid"] not in {m["where"]["pid"] for m in periodic} | {probe["where"]["pid"]}
    report = (run_dir / "report.md").read_text()
    assert "this run" in report and "pixels" in report and (run_dir / "loss_curve.png").exists()


def test_metrics_count_bad_repeated_and_dropped_samples_per_epoch(reference, small_bad_shards):
    """metrics.jsonl at the last step of each epoch, summed over both workers: the undecodable samples as often as
    the epoch's plan reads them (a repeat lap reads some twice), the plan's repeated samples (the last batches
    filled up) plus one substitute per bad read, the plan's dropped ones."""
    from conftest import planned_reads

    from data_pipeline.stream import load_source, plan_for
    from pretrain.trainer import stream_spec

    _, run_dir, _ = reference
    cfg = _cfg(run_dir.parent, "reference", small_bad_shards)
    spec = stream_spec(cfg, 2, num_views=2)
    logs = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    manifest = load_source(spec.source)
    for epoch in (0, 1):
        plan = plan_for(spec, manifest, 2, epoch)
        bad = planned_reads(plan, manifest, small_bad_shards["shard"], small_bad_shards["positions"])
        last = max((m for m in logs if m["epoch"] == epoch), key=lambda m: m["step"])
        assert last["step"] == plan.steps * (epoch + 1) and bad >= 2
        assert (last["epoch_bad_samples"], last["epoch_repeated_samples"], last["epoch_dropped_samples"]) == \
            (bad, plan.repeated + bad, plan.dropped), last
    assert plan.repeated > 0


def test_killed_worker_is_restarted_from_checkpoint(reference, small_bad_shards):
    tmp, _, ref = reference
    cfg = _cfg(tmp, "killed", small_bad_shards, "cluster.max_failures=2")
    thread, box = _run_in_thread(cfg)
    _kill_worker_when(tmp / "killed", min_step=6, rank=1)
    thread.join(600)
    assert "error" not in box, box.get("error")
    summary = json.loads((box["run_dir"] / "train_summary.json").read_text())
    assert summary["restarts"] == 1 and summary["final"]["step"] == STEPS
    resumed_at = summary["resumed_at_steps"][0]
    assert resumed_at >= 4 and resumed_at % 4 == 0
    after = _losses(box["run_dir"], attempt=1)
    assert sorted(after) == list(range(resumed_at + 1, STEPS + 1))
    for s, loss in after.items():
        assert loss == pytest.approx(ref[s], rel=1e-4, abs=1e-5), s


def test_stopped_run_resumes_by_name(reference, small_bad_shards):
    tmp, _, ref = reference
    thread, box = _run_in_thread(_cfg(tmp, "stopped", small_bad_shards, "cluster.max_failures=0"))
    _kill_worker_when(tmp / "stopped", min_step=6, rank=0)
    thread.join(600)
    assert "error" in box  # no retries allowed: the run stops
    run_dir = run_pretrain(_cfg(tmp, "stopped", small_bad_shards), show_progress=False)  # rerun the same name
    summary = json.loads((run_dir / "train_summary.json").read_text())
    resumed_at = summary["resumed_at_steps"][0]
    assert resumed_at >= 4 and summary["final"]["step"] == STEPS
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    second = lines[max(i for i, m in enumerate(lines) if m.get("event") == "start"):]
    steps = {m["step"]: m["loss"] for m in second if "loss" in m}
    assert sorted(steps) == list(range(resumed_at + 1, STEPS + 1))
    for s, loss in steps.items():
        assert loss == pytest.approx(ref[s], rel=1e-4, abs=1e-5), s


def test_rerun_with_other_model_is_refused(reference, small_bad_shards):
    from cluster.run_config import ConfigError
    tmp, _, _ = reference
    with pytest.raises(ConfigError, match=r"model.proj_dim: 32 → 16.*--allow-changes"):
        run_pretrain(_cfg(tmp, "reference", small_bad_shards, "model.proj_dim=16"), show_progress=False)


def test_bad_shards_end_the_run_at_once_with_exit_2(ray_local, digits_shards, tmp_path, capsys, monkeypatch):
    """A deterministic error in a worker (too many bad samples) is not retried: `bigbatch pretrain` exits 2 at the
    first failure with bigbatch's one-line message naming the shard, not Ray's WorkerGroupError traceback."""
    from cluster.cli import main

    monkeypatch.delenv("BIGBATCH_DEBUG", raising=False)
    shards = tmp_path / "shards"
    shutil.copytree(digits_shards["train"], shards)
    bad = sorted(shards.glob("*.tar"))[0]
    zero_images(bad)
    code = main(["pretrain", f"data.train={shards}", "steps=8", "batch_size=32", "model.encoder=bb_convnet_tiny",
                 "data.image_size=16", "eval.probe=false", "cluster.max_failures=2", f"cluster.storage_path={tmp_path}",
                 "--name", "bad", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and "WorkerGroupError" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("bigbatch pretrain: ") and "exceed max_bad_fraction" in last and bad.name in last, last
    events = [json.loads(x) for x in (tmp_path / "bad" / "metrics.jsonl").read_text().splitlines()]
    end = next(m for m in events if m.get("event") == "end")
    assert end["restarts"] == 0  # max_failures=2, yet the worker group ran once


def test_a_refused_checkpoint_on_resume_ends_the_run_at_once(reference, small_bad_shards):
    """A resumed run whose checkpoint holds a pickled object (refused by weights_only) stops at the first attempt
    with the CheckpointError naming the file (a copy of the reference run, poisoned)."""
    from pretrain.checkpoint import CheckpointError

    tmp, ref_dir, _ = reference
    run_dir = tmp / "poisoned"
    shutil.copytree(ref_dir, run_dir)
    latest = max((d for d in run_dir.glob("checkpoint_*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
    torch.save({"torch": _Pickled()}, latest / "rng-rank0.pt")
    with pytest.raises(CheckpointError, match=r"rng-rank0\.pt: cannot be loaded as a weights-only") as exc:
        run_pretrain(_cfg(tmp, "poisoned", small_bad_shards, f"steps={STEPS + 4}", "cluster.max_failures=2"),
                     show_progress=False)
    assert latest.name in str(exc.value)
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["restarts"] for m in events if m.get("event") == "end"] == [0, 0]


class _Pickled:
    """Any pickled object: a checkpoint must hold tensors, numbers, strings, lists and dicts only."""
