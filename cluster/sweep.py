"""`bigbatch sweep` on Ray Tune: every trial is a Tune function trainable that drives one ordinary bigbatch run
(``run_pretrain``: a Ray Train run with its own worker group, then the probe) and reports the run's results to Tune.

Sweep directory (``STORAGE/NAME``): ``sweep.json`` (the trials and their configs), one run directory per trial
(``trialNN-key_value-…``, readable by `bigbatch compare`), ``tune/`` (Tune's experiment state), ``results.md``,
``results.csv``, ``results.json`` and ``METRIC.png``.

Resources: Ray Train V2 reserves each run's worker group itself (its own placement group), so a trial's Tune actor
only drives it. The actor asks for a sliver of the head node's marker resource: it takes no CPU from the worker groups
and runs on the head node, the node least likely to be preempted (Ray's Train+Tune guide puts Train drivers there).
How many trials run at once is ``max_concurrent_trials`` = how many of the largest worker group the cluster holds:
one at a time on this machine, several on a cluster.

Resume: rerunning the same name restores the Tune experiment: finished trials are kept, unfinished and failed ones
run again, and each of those runs resumes from its own last checkpoint (run_pretrain resumes by run name).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from cluster.run_config import ConfigError, load_run_config
from cluster.sweep_report import METRICS, write_atomic, write_results
from cluster.sweep_space import SweepSpec, Trial, check_name, make_trials

TUNE_DIR = "tune"
SPEC_FILE = "sweep.json"
TRIAL_DRIVER = {"node:__internal_head__": 0.001}


@dataclass
class SweepOutcome:
    name: str
    sweep_dir: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]

    @property
    def interrupted(self) -> bool:
        return any(r["status"] in ("pending", "interrupted") for r in self.rows)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]


def error_line(exc: BaseException | str | None) -> str:
    """The line of a (remote) traceback that says what went wrong: its last ``SomeError: message`` line."""
    lines = [x.strip() for x in str(exc or "unknown error").splitlines() if x.strip()]
    named = [x for x in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", x)]
    line = (named or lines or ["unknown error"])[-1]
    # a user's mistake is its message alone (as the CLI prints it); anything else keeps its exception type
    return re.sub(r"^(\w+\.)*(UserInputError|ConfigError|BadInputError|ManifestMismatch): ", "", line)[:400]


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """What a finished run reports to Tune: its probe figures, final loss, steps, why it stopped, wall time."""
    from eval.compare import run_row

    row = run_row(run_dir)
    summary = json.loads((Path(run_dir) / "train_summary.json").read_text())
    return {"probe_top1": row["probe_top1"], "knn_top1": row["knn_top1"], "loss": summary["final"].get("loss"),
            "steps": row["steps"], "stop_reason": summary.get("stop_reason"), "time_s": row["time_s"],
            "run_dir": str(run_dir)}


def run_trial(config: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """The Tune function trainable: trial ``config["trial"]``'s run (Ray Train inside), then one report to Tune."""
    from ray import tune

    from cluster.launch import run_pretrain
    from pretrain.config import RunConfig

    cfg = RunConfig.model_validate(trials[config["trial"]])
    run_dir = run_pretrain(cfg, show_progress=False)
    tune.report(run_metrics(run_dir))


class TrialNames:
    """Tune's trial (and trial directory) name: the sweep's own trial name."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __call__(self, trial: Any) -> str:
        return self.names[trial.config["trial"]]


class Announce(Callback):
    """One console line per trial start, finish and failure."""

    def __init__(self, sweep_dir: str) -> None:
        self.sweep_dir = sweep_dir

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"sweep: {trial} started (progress: {self.sweep_dir}/{trial}/metrics.jsonl)", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        m = trial.last_result or {}
        top1 = f"probe top-1 {100 * m['probe_top1']:.1f} %" if m.get("probe_top1") is not None else "no probe"
        print(f"sweep: {trial} done: {top1}, {m.get('steps')} steps ({m.get('stop_reason')}), "
              f"{m.get('time_s') or 0:.0f} s", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        text = _trial_error(trial)
        _store_error(trial, text)
        print(f"sweep: {trial} FAILED: {error_line(text)}", flush=True)


def _store_error(trial: Any, text: str) -> None:
    """Put the trial's error.txt in storage now (written aside, then moved into place), where the results table reads
    it: Tune copies its own from the driver's staging directory only at its next sync, which a Ctrl-C can pre-empt."""
    try:
        fs, path = trial.storage.storage_filesystem, trial.path
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/error.txt.partial") as f:
            f.write(text.encode())
        fs.move(f"{path}/error.txt.partial", f"{path}/error.txt")
    except (OSError, AttributeError, TypeError) as exc:
        print(f"sweep: {trial}: could not store its error in {getattr(trial, 'path', '?')}: {exc}", flush=True)


def _trial_error(trial: Any) -> str:
    """The trial's error text, from the file Tune has just written on this node (storage gets it later)."""
    try:
        return Path(trial.error_file).read_text()
    except (OSError, TypeError) as exc:
        return f"(error file unreadable: {exc})"


def default_name(spec: SweepSpec, samples: int | None, seed: int, budget_minutes: float | None) -> str:
    """``CONFIG-sweep-HASH``: the same arguments give the same name, so rerunning the command resumes the sweep."""
    key = json.dumps({**spec.describe(), "samples": samples, "seed": seed, "budget": budget_minutes}, sort_keys=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(spec.config).stem if spec.config else "default")
    return f"{stem}-sweep-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _locate(storage_path: str | None, name: str) -> tuple[str, Path]:
    """(the sweep's storage URI/path for Ray, its local directory for the tables)."""
    from cluster.run_dir import DEFAULT_STORAGE
    from pretrain.run_store import is_url

    root = storage_path or str(DEFAULT_STORAGE)
    if is_url(root):
        return f"{root.rstrip('/')}/{name}", DEFAULT_STORAGE / name
    local = Path(root.removeprefix("file://")).expanduser().resolve() / name
    return str(local), local


def _record(path: Path, name: str, spec: SweepSpec, samples: int | None, seed: int, trials: list[Trial]) -> None:
    """Write ``sweep.json``; on a rerun, refuse trials that differ from the recorded ones."""
    def comparable(t: dict[str, Any]) -> dict[str, Any]:
        cfg = json.loads(json.dumps(t["config"]))
        cfg["cluster"].pop("address", None)  # the same sweep may be resumed through another address
        return {"name": t["name"], "config": cfg}

    entries = [{"index": t.index, "name": t.name, "values": t.values, "config": t.config.model_dump(mode="json")}
               for t in trials]
    if path.exists():
        old = json.loads(path.read_text())
        before, now = [comparable(t) for t in old["trials"]], [comparable(t) for t in entries]
        if before != now:
            first = next((b["name"] for b, n in zip(before, now, strict=False) if b != n), None)
            what = f"trial {first} differs" if first else f"{len(before)} trials recorded, {len(now)} now"
            raise ConfigError(f"sweep {name!r} exists in {path.parent} with other trials ({what}): rerun it with "
                              "the same arguments to resume it, or pick another --name")
    write_atomic(path, json.dumps({"name": name, **spec.describe(), "samples": samples, "seed": seed,
                                   "trials": entries}, indent=2) + "\n")


def _check_metric(trials: list[Trial], metric: str) -> None:
    """Every trial must measure the metric: the probe on (with held-out data), and kNN for knn_top1."""
    from cluster.probing import probe_sources

    if metric == "loss":
        return
    for t in trials:
        e = t.config.eval
        if not e.probe or (metric == "knn_top1" and not e.knn):
            raise ConfigError(f"--metric {metric}: trial {t.name} does not measure it "
                              f"(eval.probe{' / eval.knn' if metric == 'knn_top1' else ''} is off)")
        if probe_sources(t.config) is None:
            raise ConfigError(f"--metric {metric}: trial {t.name} has no held-out data to probe on "
                              "(set data.probe_test, or use --metric loss)")


def _concurrency(trials: list[Trial]) -> int:
    """How many of the largest worker group the cluster holds at once (at least 1)."""
    import ray

    total = ray.cluster_resources()
    cpu = max(t.config.cluster.max_workers * t.config.cluster.cpus_per_worker for t in trials)
    gpu = max(t.config.cluster.max_workers * t.config.cluster.gpus_per_worker for t in trials)
    fits = [total.get("CPU", 0.0) // cpu] + ([total.get("GPU", 0.0) // gpu] if gpu else [])
    return max(1, int(min(fits)))


def _tuner(trials: list[Trial], storage: str):
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, trials=[t.config.model_dump(mode="json") for t in trials]), TRIAL_DRIVER)
    path = f"{storage}/{TUNE_DIR}"
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    names = TrialNames([t.name for t in trials])
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(range(len(trials))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=_concurrency(trials), trial_name_creator=names,
                                    trial_dirname_creator=names),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=storage, verbose=0, callbacks=[Announce(storage)],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _rows(grid: Any, trials: list[Trial]) -> list[dict[str, Any]]:
    keys = ("probe_top1", "knn_top1", "loss", "steps", "stop_reason", "time_s", "run_dir")
    rows = [{"trial": t.name, "status": "pending", "values": t.values, **dict.fromkeys(keys), "error": None}
            for t in trials]
    for result in grid:
        row = rows[result.config["trial"]]
        metrics = result.metrics or {}
        if result.error is not None:
            row.update(status="failed", error=error_line(result.error))
        elif "run_dir" in metrics:
            row.update(status="done", **{k: metrics.get(k) for k in keys})
        elif (stored := _stored_error(result)) is not None:  # failed, but Ctrl-C came before Tune saved its state
            row.update(status="failed", error=error_line(stored))
        else:
            row["status"] = "interrupted"
    return rows


def _stored_error(result: Any) -> str | None:
    """The error.txt Tune wrote into the trial's directory when it failed, or None."""
    try:
        with result.filesystem.open_input_stream(f"{result.path}/error.txt") as f:
            return f.read().decode(errors="replace")
    except (OSError, AttributeError, TypeError):
        return None


def run_sweep(spec: SweepSpec, *, name: str | None = None, samples: int | None = None, seed: int = 0,
              budget_minutes: float | None = None, address: str | None = None,
              metric: str = "probe_top1") -> SweepOutcome:
    """Validate every trial, run them as Ray Tune trials, and write the results table. User mistakes: ConfigError."""
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: choose from {', '.join(METRICS)}")
    extra = [*([f"budget_minutes={budget_minutes}"] if budget_minutes else []),
             *([f"cluster.address={address}"] if address else [])]
    base = load_run_config(spec.config, [*spec.fixed, *extra])
    name = check_name(name or default_name(spec, samples, seed, budget_minutes))
    storage, local = _locate(base.cluster.storage_path, name)
    trials = make_trials(spec, [*extra, f"cluster.storage_path={storage}"], samples, seed)
    _check_metric(trials, metric)
    local.mkdir(parents=True, exist_ok=True)
    _record(local / SPEC_FILE, name, spec, samples, seed, trials)

    from cluster.ray_connect import connect_ray
    connect_ray(address)
    # A failed trial is one line on the console and in the table; its traceback stays in tune/TRIAL/error.txt.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    grid = _tuner(trials, storage).fit()
    rows = _rows(grid, trials)
    files = write_results(local, name, rows, list(spec.axes), metric)
    return SweepOutcome(name, local, rows, files)
