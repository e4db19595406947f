"""Launching a pretraining run with Ray Train: embedded local Ray by default, an existing cluster with an address.

``run_pretrain(cfg)`` → the run directory, holding ``config.yaml``, ``metrics.jsonl``, ``tb/``, ``workers.json``,
Ray Train's ``checkpoint_*`` directories, ``artifacts/``, ``train_summary.json`` (once training finished), the
probe's figures and ``report.md`` — all in ``storage_path/name`` (with a URL storage path: mirrored there from the
driver's working copy at every checkpoint and at the end, train_summary.json last).
Rerunning with the same ``name`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from cluster.artifacts import collect_artifacts
from cluster.monitor import CheckpointWatcher, ProgressMonitor, fit_while_polling
from cluster.preflight import check_data
from cluster.probing import ProbeTasks, probe_sources
from cluster.ray_connect import connect_ray, embedded_cpus
from cluster.run_dir import RunDir, default_name, prepare_run_dir
from cluster.trackers import Trackers
from cluster.trainer_config import build_trainer
from eval.report import write_report
from eval.run_probe import flat_results, write_probe
from pretrain.config import RunConfig
from pretrain.run_store import SUMMARY_FILE, RunStore, is_url, write_text_atomic

LISTING_INTERVAL_S = 5.0  # how often the driver lists a URL storage path for new checkpoints


def run_pretrain(cfg: RunConfig, *, show_progress: bool = True, probe: bool | None = None,
                 allow_changes: bool = False) -> Path:
    """Train with Ray Train, then probe (as a Ray task) and report. Returns the local run directory."""
    if cfg.name is None:
        cfg = cfg.model_copy(update={"name": default_name(cfg)})
    periodic, final = _probe_plan(cfg, probe)
    check_data(cfg, periodic or final)
    run_dir = prepare_run_dir(cfg, allow_changes)
    connect_ray(cfg.cluster.address, num_cpus=embedded_cpus(cfg))
    trackers = Trackers(cfg, run_dir.local)
    try:
        summary, probes = _train(cfg, run_dir, trackers, show_progress, periodic)
        write_text_atomic(run_dir.local / SUMMARY_FILE, json.dumps(summary, indent=2))
        if final:
            res = probes.final(summary["checkpoint"])
            write_probe(run_dir.local, res)
            trackers.log_metrics(flat_results(res), res["step"])
        report = write_report(run_dir.local)
        for path in (report, run_dir.local / "loss_curve.png"):
            trackers.log_artifact(path)
    except BaseException:
        trackers.close(failed=True)
        try:  # what the failed run wrote still reaches the storage path; the run's own error is the one raised
            run_dir.sync()
        except Exception as exc:  # noqa: BLE001
            print(f"bigbatch: warning: could not copy the run directory to {run_dir.url}: {exc}", file=sys.stderr)
        raise
    trackers.close()
    run_dir.sync()
    return run_dir.local


def _train(cfg: RunConfig, run_dir: RunDir, trackers: Trackers, show_progress: bool,
           periodic: bool) -> tuple[dict, ProbeTasks]:
    """Ray Train's fit with the driver polling progress, checkpoints, periodic probes; the run's summary."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from cluster.progress import MetricsSink, ProgressActor, resizes

    # on the driver's node (as Ray Train's controller): losing another node does not lose the run's progress
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = ProgressActor.options(scheduling_strategy=here).remote()
    trainer = build_trainer(cfg, run_dir.storage, progress)
    sink = MetricsSink(run_dir.local, cfg.steps, show=show_progress, trackers=trackers)
    sink.event("start", name=cfg.name, workers=cfg.cluster.workers, storage=run_dir.storage)
    monitor = ProgressMonitor(progress, sink, run_dir.local)
    store = RunStore(run_dir.url)
    watcher = CheckpointWatcher(store, interval=LISTING_INTERVAL_S if is_url(run_dir.url) else 0.0)

    def on_probe(res: dict) -> None:
        sink.event("probe", step=res["step"], **flat_results(res), where=res["where"])
        trackers.log_metrics(flat_results(res), res["step"])

    probes = ProbeTasks(cfg, run_dir.url, on_probe,
                        lambda ckpt, why: sink.event("probe_skipped", checkpoint=ckpt, reason=why))

    def poll(final: bool = False) -> None:
        monitor.poll()
        new = watcher.new(force=final)
        # A checkpoint is listed once its state.pt is in storage, maybe while Ray still copies its PNGs: every
        # arrival and the end collect the PNGs of all listed checkpoints (copying those missing or of another size).
        for ckpt in watcher.listed if (new or final) else ():
            collect_artifacts(store, ckpt, run_dir.local)
        for ckpt in new:
            if periodic:
                probes.submit(ckpt)
        probes.collect(wait=final)
        if new:
            run_dir.sync()

    t0 = time.time()
    try:
        outcome = fit_while_polling(trainer, poll)
        poll(final=True)
    finally:
        summary = {"name": cfg.name, "run_dir": str(run_dir.local), "storage": run_dir.storage, "url": run_dir.url,
                   "wall_time_s": time.time() - t0, "restarts": max(0, sink.starts - 1),
                   "resumed_at_steps": sink.resumed_at, "resizes": resizes(sink.groups), "workers": monitor.workers,
                   "stop_reason": sink.last.get("stop_reason"), "final": sink.last,
                   "driver": {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                              "pid": os.getpid()}}
        sink.event("end", **{k: v for k, v in summary.items() if k != "final"})
        sink.close()
        ray.kill(progress)
    error = outcome.error or getattr(outcome.result, "error", None)
    if error is not None:
        from cluster.ray_failures import user_error_of

        user_error = user_error_of(error)
        if user_error is not None:  # a worker's user error as itself: one line in the CLI (--debug: Ray's report too)
            raise user_error from error
        raise error
    summary["checkpoint"] = _final_checkpoint(outcome.result, run_dir)
    return summary, probes


def _final_checkpoint(result: Any, run_dir: RunDir) -> str:
    """The URL (or local path) of the run's last checkpoint."""
    if result.checkpoint is None:
        raise RuntimeError(f"{run_dir.url}: training finished without a checkpoint")
    return f"{run_dir.url}/{result.checkpoint.path.rstrip('/').rsplit('/', 1)[-1]}"


def _probe_plan(cfg: RunConfig, probe: bool | None) -> tuple[bool, bool]:
    """(periodic probes, final probe); both off, said once, when the config names no data to probe on."""
    final = cfg.eval.probe if probe is None else probe
    periodic = cfg.eval.probe and cfg.eval.every_k_checkpoints > 0
    if (final or periodic) and probe_sources(cfg) is None:
        print(f"bigbatch: probe skipped: no data.probe_test in the config of {cfg.name}", file=sys.stderr)
        return False, False
    return periodic, final
