"""Launching a pretraining run with Ray Train: embedded local Ray by default, an existing cluster with an address.

``run_pretrain(cfg)`` → the run directory, holding ``config.yaml``, ``metrics.jsonl``, ``tb/``, Ray Train's
``checkpoint_*`` directories (in ``storage_path/name``), the probe's figures and ``report.md``.
Rerunning with the same ``name`` (and storage path) resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from cluster.run_config import ConfigError, dump_yaml
from pretrain.config import RunConfig, from_stored

DEFAULT_STORAGE = Path(os.environ.get("BIGBATCH_RUNS", "~/bigbatch_runs")).expanduser()
# What a resumed run (same name) may not change without --allow-changes: what the checkpoint's model, optimiser state
# and stream position were made for (dotted prefixes).
RESUME_CHECKED = ("method", "batch_size", "seed", "model", "loss", "optim", "vae", "gan", "data.train", "data.image_size")


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def default_name(cfg: RunConfig) -> str:
    return f"{cfg.method}-{cfg.variant}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: RunConfig, allow_changes: bool = False) -> tuple[str, Path]:
    """(storage path for Ray, local run dir). Writes config.yaml; a rerun of a run whose RESUME_CHECKED keys changed
    is refused unless ``allow_changes``; any changed config goes to config-resume-N.yaml (config.yaml is kept)."""
    storage = cfg.cluster.storage_path or str(DEFAULT_STORAGE)
    if is_remote(storage):
        local = DEFAULT_STORAGE / cfg.name
    else:
        storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
        local = Path(storage) / cfg.name
    local.mkdir(parents=True, exist_ok=True)
    cfg_path = local / "config.yaml"
    if not cfg_path.exists():
        _write_atomic(cfg_path, dump_yaml(cfg))
        return storage, local
    try:
        old = from_stored(yaml.safe_load(cfg_path.read_text()))
    except (yaml.YAMLError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{cfg_path}: not a readable bigbatch config ({' '.join(str(exc).split())[:300]}); "
                          "pick another run name") from exc
    changed = changed_keys(old, cfg)
    if not changed:
        return storage, local
    shown = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())
    refused = [k for k in changed if any(k == c or k.startswith(c + ".") for c in RESUME_CHECKED)]
    if refused and not allow_changes:
        raise ConfigError(f"run {cfg.name!r} in {local} was started with another config ({shown}): resume it with "
                          "its own config, pick another name, or pass --allow-changes")
    n = 1 + len(list(local.glob("config-resume-*.yaml")))
    _write_atomic(local / f"config-resume-{n}.yaml", dump_yaml(cfg))
    print(f"bigbatch: run {cfg.name!r} continues with changed {shown}; config.yaml keeps the original config, "
          f"the new one is config-resume-{n}.yaml", file=sys.stderr)
    return storage, local


def changed_keys(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (old, new) for every value that differs between two configs (the run name aside)."""
    a, b = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) and k != "name"}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address == "auto":
        # The cluster this process already belongs to: RAY_ADDRESS (set for a Ray Jobs API / KubeRay job, whose
        # working_dir or image carries the code) or the cluster `ray start` made on this node.
        ray.init(address="auto")
    elif address:
        import cluster
        import data_pipeline
        import eval as eval_pkg
        import pretrain
        ray.init(address=address, runtime_env={"py_modules": [data_pipeline, pretrain, eval_pkg, cluster]})
    else:
        # address="local" always starts a new instance: without it ray.init() attaches to whatever Ray was started
        # last on this machine (RAY_ADDRESS, /tmp/ray/ray_current_cluster), and dies with it. No dashboard: its head
        # process then runs without a listener. Every listener on 127.0.0.1: cluster/loopback.py.
        from cluster.loopback import loopback_only
        with loopback_only():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)


def build_trainer(cfg: RunConfig, storage: str, progress: Any):
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig

    from cluster.loopback import LoopbackTorchConfig
    from cluster.ray_failures import FailFastTorchTrainer
    from pretrain.train_loop import train_func

    c = cfg.cluster
    use_gpu = c.gpus_per_worker > 0
    resources = {"CPU": c.cpus_per_worker, **({"GPU": c.gpus_per_worker} if use_gpu else {})}
    return FailFastTorchTrainer(  # a user error in a worker ends the run at once (no retries)
        train_func,
        train_loop_config={"run": cfg.model_dump(mode="json"), "progress": progress},
        # embedded: every worker on this machine, rendezvous without a TCPStore on all interfaces
        torch_config=(TorchConfig if c.address else LoopbackTorchConfig)(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=c.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RayRunConfig(
            name=cfg.name, storage_path=storage,
            failure_config=FailureConfig(max_failures=c.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=c.num_to_keep),
        ),
    )


def check_data(cfg: RunConfig, probe: bool) -> None:
    """Read the manifests of the training (and probe) shards before Ray starts: a wrong path fails now, naming it.
    The built-in digits are written here once, before workers race for them. On an existing cluster the workers'
    files may not be visible here: they check them themselves (a missing file ends the run at once)."""
    from data_pipeline.stream import load_source

    if cfg.cluster.address:
        if cfg.data.train == "digits":
            load_source("digits")
        return
    sources = [cfg.data.train]
    if probe:
        sources += probe_sources(cfg) or ()
    for source in dict.fromkeys(sources):
        load_source(source)


def run_pretrain(cfg: RunConfig, *, show_progress: bool = True, probe: bool | None = None,
                 allow_changes: bool = False) -> Path:
    """Train with Ray Train, then probe and report. Returns the local run directory."""
    import ray

    from cluster.progress import MetricsSink, ProgressActor

    if cfg.name is None:
        cfg = cfg.model_copy(update={"name": default_name(cfg)})
    probe = cfg.eval.probe if probe is None else probe
    check_data(cfg, probe)
    storage, run_dir = prepare_run_dir(cfg, allow_changes)
    connect_ray(cfg.cluster.address)
    progress = ProgressActor.remote()
    trainer = build_trainer(cfg, storage, progress)
    sink = MetricsSink(run_dir, cfg.steps, show=show_progress)
    sink.event("start", name=cfg.name, workers=cfg.cluster.workers, storage=storage)
    outcome: dict[str, Any] = {}
    t0 = time.time()

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the driver thread below
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    workers: dict[int, dict[str, Any]] = {}
    periodic = PeriodicProbe(cfg, run_dir) if cfg.eval.probe and cfg.eval.every_k_checkpoints else None
    while thread.is_alive():
        thread.join(timeout=0.5)
        sink.consume(*ray.get(progress.drain.remote()))
        workers = _record_workers(run_dir, ray.get(progress.worker_info.remote()), workers)
        _collect_artifacts(run_dir, run_dir.glob("checkpoint_*/artifacts"))
        if periodic:
            periodic.poll(sink)
    sink.consume(*ray.get(progress.drain.remote()))
    workers = _record_workers(run_dir, ray.get(progress.worker_info.remote()), workers)
    if periodic:  # the last checkpoints, written after the last poll
        periodic.poll(sink)
    wall = time.time() - t0
    restarts = max(0, sink.starts - 1)
    summary = {"name": cfg.name, "run_dir": str(run_dir), "storage": storage, "wall_time_s": wall,
               "restarts": restarts, "resumed_at_steps": sink.resumed_at, "workers": workers, "final": sink.last}
    sink.event("end", **{k: v for k, v in summary.items() if k != "final"})
    sink.close()
    ray.kill(progress)
    error = outcome.get("error") or getattr(outcome.get("result"), "error", None)
    if error is not None:
        from cluster.ray_failures import user_error_of
        user_error = user_error_of(error)
        if user_error is not None:  # a worker's user error as itself: one line in the CLI (--debug: Ray's report too)
            raise user_error from error
        raise error
    result = outcome["result"]
    ckpt_dir = _local_checkpoint(result, run_dir)
    _collect_artifacts(run_dir, [ckpt_dir / "artifacts"])
    summary["checkpoint"] = str(ckpt_dir)
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    if probe:
        _probe(cfg, run_dir, ckpt_dir)
    _report(run_dir)
    return run_dir


def _record_workers(run_dir: Path, current: dict[int, dict[str, Any]], known: dict[int, dict[str, Any]]):
    """Keep ``run_dir/workers.json`` (rank → node, host, PID) current; restarted workers replace their entry."""
    if current != known:
        tmp = run_dir / ".workers.json.tmp"
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(current.items())}, indent=2))
        os.replace(tmp, run_dir / "workers.json")
    return current


class PeriodicProbe:
    """Probe every k-th checkpoint as it appears in a local run dir (``eval.every_k_checkpoints``); results go to
    metrics.jsonl as ``{"event": "probe", "step": …}`` lines. Runs on the driver, between progress polls."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir, self.seen = cfg, run_dir, set()
        self.sources = probe_sources(cfg)

    def poll(self, sink: Any) -> None:
        if self.sources is None:
            return
        for d in sorted(p for p in self.run_dir.glob("checkpoint_*") if (p / "state.pt").is_file()):
            if d.name in self.seen:
                continue
            self.seen.add(d.name)
            try:
                step = _checkpoint_step(d)
                if (step // self.cfg.checkpoint_every) % self.cfg.eval.every_k_checkpoints:
                    continue
                from eval.run_probe import probe_run
                res = probe_run(d, *self.sources, knn=self.cfg.eval.knn, seed=self.cfg.seed)
            except (OSError, ValueError, RuntimeError) as exc:  # pruned by Ray while being read: say so
                sink.event("probe_skipped", checkpoint=d.name, reason=str(exc))
                continue
            sink.event("probe", step=step, probe_top1=res["method"]["top1"], probe_top5=res["method"]["top5"],
                       knn_top1=res["method"].get("knn_top1"))


def _checkpoint_step(directory: Path) -> int:
    import torch
    return int(torch.load(directory / "state.pt", map_location="cpu", weights_only=True)["step"])


def _collect_artifacts(run_dir: Path, sources) -> None:
    """Copy each checkpoint's PNGs (samples, reconstructions) into ``run_dir/artifacts`` before Ray prunes it."""
    import shutil
    for src in sources:
        for png in Path(src).glob("*.png"):
            dest = run_dir / "artifacts" / png.name
            if not dest.exists():
                dest.parent.mkdir(exist_ok=True)
                shutil.copyfile(png, dest)


def _local_checkpoint(result: Any, run_dir: Path) -> Path:
    """The final checkpoint as a local directory (downloaded into the run dir when storage is remote)."""
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError(f"{run_dir}: training finished without a checkpoint")
    if not is_remote(ckpt.path):
        return Path(ckpt.path)
    dest = run_dir / "final_checkpoint"
    ckpt.to_directory(str(dest))
    return dest


def probe_sources(cfg: RunConfig) -> tuple[str, str] | None:
    d = cfg.data
    if d.train == "digits":
        from data_pipeline.builtin import ensure_digits
        train, holdout = ensure_digits()
        return d.probe_train or str(train), d.probe_test or str(holdout)
    if d.probe_test:
        return d.probe_train or d.train, d.probe_test
    return None


def _probe(cfg: RunConfig, run_dir: Path, ckpt_dir: Path) -> None:
    sources = probe_sources(cfg)
    if sources is None:
        print(f"probe skipped: no data.probe_test in the config of {cfg.name}")
        return
    from eval.run_probe import probe_run
    probe_run(ckpt_dir, sources[0], sources[1], run_dir=run_dir, baselines=tuple(cfg.eval.baselines),
              knn=cfg.eval.knn, seed=cfg.seed)


def _report(run_dir: Path) -> None:
    try:
        from eval.report import write_report
    except ModuleNotFoundError:
        return
    write_report(run_dir)
