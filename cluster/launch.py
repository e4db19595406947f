"""Launching a pretraining run with Ray Train: embedded local Ray by default, an existing cluster with an address.

``run_pretrain(cfg)`` → the run directory, holding ``config.yaml``, ``metrics.jsonl``, ``tb/``, Ray Train's
``checkpoint_*`` directories (in ``storage_path/name``), the probe's figures and ``report.md``.
Rerunning with the same ``name`` (and storage path) resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cluster.artifacts import collect_artifacts, local_checkpoint, write_report
from cluster.monitor import ProgressMonitor, fit_while_polling
from cluster.probing import PeriodicProbe, final_probe
from cluster.ray_connect import connect_ray
from cluster.run_dir import default_name, prepare_run_dir
from cluster.trainer_config import build_trainer
from pretrain.config import RunConfig


def run_pretrain(cfg: RunConfig, *, show_progress: bool = True, probe: bool | None = None) -> Path:
    """Train with Ray Train, then probe and report. Returns the local run directory."""
    import ray

    from cluster.progress import MetricsSink, ProgressActor

    if cfg.name is None:
        cfg = cfg.model_copy(update={"name": default_name(cfg)})
    storage, run_dir = prepare_run_dir(cfg)
    if cfg.data.train == "digits":  # write the built-in shards once, before workers race for them
        from data_pipeline.builtin import ensure_digits
        ensure_digits()
    connect_ray(cfg.cluster.address)
    progress = ProgressActor.remote()
    trainer = build_trainer(cfg, storage, progress)
    sink = MetricsSink(run_dir, cfg.steps, show=show_progress)
    sink.event("start", name=cfg.name, workers=cfg.cluster.workers, storage=storage)
    monitor = ProgressMonitor(progress, sink, run_dir)
    periodic = PeriodicProbe(cfg, run_dir) if cfg.eval.probe and cfg.eval.every_k_checkpoints else None

    def poll() -> None:
        monitor.poll()
        collect_artifacts(run_dir, run_dir.glob("checkpoint_*/artifacts"))
        if periodic:
            periodic.poll(sink)

    t0 = time.time()
    outcome = fit_while_polling(trainer, poll)
    monitor.poll()
    summary = {"name": cfg.name, "run_dir": str(run_dir), "storage": storage, "wall_time_s": time.time() - t0,
               "restarts": max(0, sink.starts - 1), "resumed_at_steps": sink.resumed_at, "workers": monitor.workers,
               "final": sink.last}
    sink.event("end", **{k: v for k, v in summary.items() if k != "final"})
    sink.close()
    ray.kill(progress)
    if outcome.error is not None:
        raise outcome.error
    if getattr(outcome.result, "error", None):
        raise outcome.result.error
    ckpt_dir = local_checkpoint(outcome.result, run_dir)
    collect_artifacts(run_dir, [ckpt_dir / "artifacts"])
    summary["checkpoint"] = str(ckpt_dir)
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    if probe if probe is not None else cfg.eval.probe:
        final_probe(cfg, run_dir, ckpt_dir)
    write_report(run_dir)
    return run_dir
