"""`bigbatch sweep`: the value syntax and trial list (no Ray), then real sweeps of tiny digits runs as Ray Tune trials —
a 2×2 grid read back by `bigbatch compare`, a rerun that runs nothing, random search under a time budget, and a
failing trial plus Ctrl-C and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.sweep import _rows, error_line
from cluster.sweep_report import write_results
from cluster.sweep_space import Range, make_trials, parse_items, split_values, trial_name

TINY = ["model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=16",
        "log_every=1", "eval.knn=false", "eval.baselines=[]", "cluster.max_failures=0", "cluster.workers=1"]


# -- syntax and trials, no Ray --------------------------------------------------------------------------------------
def test_values_split_outside_brackets_and_quotes():
    assert split_values("0.1,0.3") == ["0.1", "0.3"]
    assert split_values("[pixels],[pixels,pca]") == ["[pixels]", "[pixels,pca]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    spec = parse_items(["ranking", "optim.lr=loguniform(1e-4,1e-1)", "loss.temperature=0.1,0.2", "steps=4"])
    assert spec.config == "ranking" and spec.fixed == ["steps=4"]
    assert spec.axes == {"optim.lr": Range("loguniform", 1e-4, 0.1), "loss.temperature": ["0.1", "0.2"]}


def test_grid_trials_are_validated_configs_with_sanitised_names():
    spec = parse_items(["optim.lr=0.1,0.3", "eval.baselines=[pixels],[pixels,pca]", "steps=4"])
    trials = make_trials(spec, ["cluster.storage_path=/tmp/x"])
    assert [t.values for t in trials] == [
        {"optim.lr": 0.1, "eval.baselines": ["pixels"]}, {"optim.lr": 0.1, "eval.baselines": ["pixels", "pca"]},
        {"optim.lr": 0.3, "eval.baselines": ["pixels"]}, {"optim.lr": 0.3, "eval.baselines": ["pixels", "pca"]}]
    assert trials[1].name == "trial01-lr_0.1-baselines_pixels_pca" == trials[1].config.name
    assert trials[3].config.optim.lr == 0.3 and trials[3].config.steps == 4
    assert trial_name(7, 3, {"optim.lr": 1e-4, "gan.lr": 2e-4, "model.encoder": "a/b c"}) == \
        "trial007-optim.lr_0.0001-gan.lr_0.0002-encoder_a_b_c"


def test_random_trials_are_seeded_draws_within_the_range():
    spec = parse_items(["optim.lr=loguniform(0.01,1)", "model.proj_dim=16,32,64", "seed=randint(0,3)"])
    a, b = make_trials(spec, [], samples=6, seed=1), make_trials(spec, [], samples=6, seed=1)
    assert [t.values for t in a] == [t.values for t in b]
    assert [t.values for t in a] != [t.values for t in make_trials(spec, [], samples=6, seed=2)]
    for t in a:
        assert 0.01 <= t.config.optim.lr <= 1 and t.config.model.proj_dim in (16, 32, 64) and t.config.seed in (0, 1, 2)
        assert t.values["optim.lr"] == t.config.optim.lr  # the drawn float reaches the config unchanged


@pytest.mark.parametrize("items, message", [
    (["optim.lr=loguniform(1e-4,1e-1)"], "a range needs random search (--samples N)"),
    (["optim.lr=loguniform(0,1)", "--samples", "2"], "loguniform needs LOW > 0"),
    (["optim.lr=uniform(1)", "--samples", "2"], "expected uniform(LOW,HIGH)"),
    (["optim.lrr=0.1,0.2"], "trial 0 (optim.lrr=0.1): invalid configuration"),
    (["optim.lr=fast,slow"], "optim.lr: Input should be a valid number"),
    (["optim.lr=0.1,0.2", "optim.lr=0.3"], "optim.lr is given twice"),
    (["ranking", "steps=4", "oops"], "'oops': expected KEY=VALUE"),
    (["optim.lr=0.1,0.2", "--name", "a/b"], "sweep name 'a/b': use letters"),
    (["optim.lr=0.1,0.2", "eval.knn=false", "--metric", "knn_top1"], "does not measure it"),
    (["optim.lr=0.1,0.2", "--samples", "0"], "--samples 0: must be at least 1"),
    (["optim.lr=0.1,0.2", "name=x"], "trials are named by the sweep"),
    (["optim.lr=0.1,0.2", "data.train=/nonexistent/shards"], "no held-out data to probe on"),
])
def test_user_mistakes_exit_2_before_ray(items, message, capsys, tmp_path):
    options = items.index(next((i for i in items if i.startswith("--")), None)) if any(
        i.startswith("--") for i in items) else len(items)
    assert main(["sweep", *items[:options], f"cluster.storage_path={tmp_path}", *items[options:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bigbatch sweep: ") and message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written, nothing started


def test_error_line_picks_the_cause_out_of_a_worker_traceback():
    text = ("Failure # 1 (occurred at 2026-01-01)\nray.train.WorkerGroupError: Training failed due to worker errors:\n"
            "[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
            "    raise ValueError(msg)\nValueError: digits: the stream gives 0 steps per epoch at batch 2048\n")
    assert error_line(text) == "ValueError: digits: the stream gives 0 steps per epoch at batch 2048"
    assert error_line("no error class here") == "no error class here"


def test_results_files_hold_every_row(tmp_path):
    rows = [{"trial": f"trial0{i}", "status": "done", "values": {"optim.lr": lr, "model.norm": norm},
             "probe_top1": top1, "knn_top1": None, "loss": 1.0, "steps": 4, "stop_reason": "steps", "time_s": 9.0,
             "run_dir": f"/r/{i}", "error": None}
            for i, (lr, norm, top1) in enumerate([(0.1, "batch", 0.5), (0.3, "group", 0.7)])]
    rows.append({"trial": "trial02", "status": "failed", "values": {"optim.lr": 1.0, "model.norm": "none"},
                 "error": "ValueError: bad | pipe"})
    files = write_results(tmp_path, "s", rows, ["optim.lr", "model.norm"], "probe_top1")
    md = files["md"].read_text()
    assert "Best by probe_top1: `trial01` (70.0 %)" in md and "| **trial01** | done | 0.3 | group | 70.0 %" in md
    assert "| trial02 | failed | 1 | none |" in md and "ValueError: bad \\| pipe" in md
    lines = files["csv"].read_text().splitlines()
    assert lines[0].startswith("trial,status,optim.lr,model.norm,probe_top1") and len(lines) == 4
    assert json.loads(files["json"].read_text())["best"] == "trial01"
    assert files["png"].stat().st_size > 5000


# -- real sweeps on Ray Tune -------------------------------------------------------------------------------------------
def _data(shards) -> list[str]:
    return [f"data.train={shards['train']}", f"data.probe_test={shards['holdout']}"]


def _table(sweep_dir: Path) -> dict[str, dict]:
    return {r["trial"]: r for r in json.loads((sweep_dir / "results.json").read_text())["trials"]}


def _starts(run_dir: Path) -> int:
    return sum(json.loads(x).get("event") == "start" for x in (run_dir / "metrics.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_grid_sweep_runs_every_trial_and_a_rerun_runs_none(ray_local, digits_shards, tmp_path, capsys):
    args = ["sweep", *TINY, *_data(digits_shards), "batch_size=64", "steps=3",
            f"cluster.storage_path={tmp_path}", "optim.lr=0.1,0.3", "loss.temperature=0.2,0.5", "--name", "grid"]
    assert main(args) == 0
    sweep = tmp_path / "grid"
    table = _table(sweep)
    assert [(r["values"]["optim.lr"], r["values"]["loss.temperature"]) for r in table.values()] == [
        (0.1, 0.2), (0.1, 0.5), (0.3, 0.2), (0.3, 0.5)]
    assert list(table) == ["trial00-lr_0.1-temperature_0.2", "trial01-lr_0.1-temperature_0.5",
                           "trial02-lr_0.3-temperature_0.2", "trial03-lr_0.3-temperature_0.5"]
    for name, row in table.items():
        run = sweep / name
        assert row["status"] == "done" and row["steps"] == 3 and row["stop_reason"] == "steps"
        assert (run / "probe.json").is_file() and 0 < row["probe_top1"] <= 1
        assert json.loads((run / "probe.json").read_text())["method"]["top1"] == row["probe_top1"]
    assert (sweep / "results.csv").read_text().count("\n") == 5 and (sweep / "probe_top1.png").is_file()
    assert "| **trial0" in (sweep / "results.md").read_text()
    capsys.readouterr()
    assert main(["compare", *(str(sweep / n) for n in table), "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert [c["run"] for c in compared] == list(table)
    assert [c["probe_top1"] for c in compared] == [r["probe_top1"] for r in table.values()]

    assert main(args) == 0  # the same sweep again: Tune restores it, every trial is finished, nothing reruns
    assert _table(sweep) == table and all(_starts(sweep / n) == 1 for n in table)
    changed = [a if a != "loss.temperature=0.2,0.5" else "loss.temperature=0.2,0.7" for a in args]
    assert main(changed) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_random_search_under_a_time_budget(ray_local, digits_shards, tmp_path):
    """--samples draws lr from a log-uniform range (one trial here: the draws themselves are tested above);
    --budget-minutes stops a run of 100000 steps by time, then probes it."""
    assert main(["sweep", *TINY, *_data(digits_shards), "batch_size=64", "steps=100000",
                 "checkpoint_every=100000", f"cluster.storage_path={tmp_path}", "optim.lr=loguniform(0.05,0.5)",
                 "--samples", "1", "--budget-minutes", "0.1", "--name", "rand"]) == 0
    table = _table(tmp_path / "rand")
    assert len(table) == 1
    for name, row in table.items():
        run = tmp_path / "rand" / name
        assert 0.05 <= row["values"]["optim.lr"] <= 0.5 and row["status"] == "done"
        assert row["values"]["optim.lr"] == make_trials(parse_items(["optim.lr=loguniform(0.05,0.5)"]), [],
                                                        samples=1, seed=0)[0].values["optim.lr"]  # --seed 0's draw
        assert row["stop_reason"] == "budget" and 1 <= row["steps"] < 100000
        summary = json.loads((run / "train_summary.json").read_text())
        assert summary["stop_reason"] == "budget" and summary["final"]["step"] == row["steps"]
        assert Path(summary["checkpoint"]).is_dir() and (run / "probe.json").is_file()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.mark.slow
def test_failed_trial_ctrl_c_and_resume(ray_local, digits_shards, tmp_path):
    """A trial whose shards are garbage fails in its workers and the sweep goes on. Ctrl-C (SIGINT to the process
    group, as a terminal sends it) during the second trial stops the sweep with exit code 130; rerunning it retries
    the failed trial and finishes the interrupted one."""
    import psutil

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad-000000.tar").write_bytes(os.urandom(5000))
    good = digits_shards["train"]
    args = ["sweep", *TINY, f"data.probe_test={digits_shards['holdout']}", "batch_size=64", "steps=3",
            f"cluster.storage_path={tmp_path}", f"data.train={bad},{good}", "--name", "ctrlc"]
    first_name = trial_name(0, 2, {"data.train": str(bad)})
    second = tmp_path / "ctrlc" / trial_name(1, 2, {"data.train": str(good)})
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: (second / "metrics.jsonl").is_file() and _starts(second) == 1, 600, "second trial start")
        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command" in err and "Traceback" not in err
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive  # Ray's processes ended with the sweep
    table = _table(tmp_path / "ctrlc")
    assert table[first_name]["status"] == "failed" and table[first_name]["error"].startswith(
        f"{bad}: no shard could be read: unreadable_shard: {bad}/bad-000000.tar: not a tar archive")
    assert table[second.name]["status"] in ("interrupted", "pending")
    assert f"{first_name} FAILED: {bad}: no shard could be read" in out

    assert main(args) == 1  # resumed: the failed trial fails again, the interrupted one finishes
    table = _table(tmp_path / "ctrlc")
    assert table[first_name]["status"] == "failed"
    assert table[second.name]["status"] == "done" and (second / "probe.json").is_file()


def test_a_trial_that_failed_before_tune_saved_its_state_reads_as_failed(tmp_path, digits_shards):
    """Ctrl-C right after a trial failed: Tune's saved state may not hold the error yet, but the trial's error.txt
    does; a trial with neither an error nor results is interrupted; one with results is done."""
    from ray.tune import Result

    trials = make_trials(parse_items([*TINY, *_data(digits_shards), "optim.lr=0.1,0.2,0.3"]), [], None, 0)
    dirs = [tmp_path / t.name for t in trials]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "error.txt").write_text("Failure # 1 (occurred at 2026-12-02_17-36-10)\nTraceback (most recent call "
                                       "last):\n  File \"x.py\", line 1\ndata_pipeline.errors.UserInputError: "
                                       "/data/bad: no shard could be read\n")
    results = [Result(metrics={"config": {"trial": i}, **extra}, checkpoint=None, error=None, path=str(d))
               for i, (d, extra) in enumerate(zip(dirs, [{}, {}, {"run_dir": "/r", "steps": 3}], strict=True))]
    rows = _rows(results, trials)
    assert [r["status"] for r in rows] == ["failed", "interrupted", "done"]
    assert rows[0]["error"] == "/data/bad: no shard could be read" and rows[2]["steps"] == 3


def test_a_failed_trials_error_is_in_storage_at_once(tmp_path):
    """Tune writes error.txt in the driver's staging directory and syncs it later; the sweep's callback puts it where
    the results table reads it (the trial's storage directory) as the failure is announced."""
    from types import SimpleNamespace

    import pyarrow.fs
    from ray.tune import Result

    from cluster.sweep import Announce, _stored_error

    staged = tmp_path / "staging" / "error.txt"
    staged.parent.mkdir()
    staged.write_text("Failure # 1\nTraceback (most recent call last):\nValueError: the trial broke\n")
    stored = tmp_path / "storage" / "tune" / "trial00"
    trial = SimpleNamespace(error_file=str(staged), path=str(stored),
                            storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem()))
    Announce(str(tmp_path / "storage")).on_trial_error(0, [], trial)
    assert (stored / "error.txt").read_text() == staged.read_text() and not (stored / "error.txt.partial").exists()
    result = Result(metrics={}, checkpoint=None, error=None, path=str(stored))
    assert error_line(_stored_error(result)) == "ValueError: the trial broke"
