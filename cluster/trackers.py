"""Experiment trackers fed by the driver (one writer: it receives rank 0's metrics): TensorBoard, MLflow, W&B.

Each gets the config and run name as parameters, every logged metric at its step, the probe's figures and the
report with its loss curve. A resumed run continues the same MLflow / W&B run (their ids are kept in
``run_dir/trackers.json``). A tracker that fails — unreachable server, no login — is switched off with one
warning line; the run goes on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from pretrain.config import RunConfig

IDS_FILE = "trackers.json"


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def flat_config(cfg: RunConfig) -> dict[str, str]:
    """The config as ``{"section.key": "value"}`` (tracker parameters are flat strings)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(node)

    walk("", cfg.model_dump(mode="json"))
    return out


class TensorBoardTracker:
    run_id = None

    def __init__(self, cfg: RunConfig, run_dir: Path, run_id: str | None) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat_config(cfg).items()))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def log_artifact(self, path: Path) -> None:
        pass  # the report and PNGs sit beside tb/ in the run directory

    def close(self, failed: bool = False) -> None:
        self.writer.close()


@contextmanager
def _few_retries() -> Any:
    """MLflow retries an unreachable server for minutes by default; the first contact tries twice."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    saved = {k: os.environ.get(k) for k in keys}
    for k, v in keys.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


class MLflowTracker:
    """One MLflow run per bigbatch run (continued on resume), through ``MlflowClient``: no global active run."""

    def __init__(self, cfg: RunConfig, run_dir: Path, run_id: str | None) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=cfg.tracking.mlflow_uri)
        params = flat_config(cfg)
        with _few_retries():
            if run_id is None:
                exp = self.client.get_experiment_by_name(cfg.tracking.project)
                exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.tracking.project)
                run = self.client.create_run(exp_id, run_name=cfg.name, tags={"bigbatch.run": cfg.name})
                self.run_id = run.info.run_id
                self._log_params(params)
            else:  # a resume: the same run, reopened; parameters it already has are immutable in MLflow
                self.run_id = run_id
                old = self.client.get_run(run_id).data.params
                self.client.update_run(run_id, status="RUNNING")
                self._log_params({k: v for k, v in params.items() if k not in old})
                changed = {f"resumed_with.{k}": v for k, v in params.items() if k in old and old[k] != v}
                for k, v in changed.items():
                    self.client.set_tag(run_id, k, v)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 parameters
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandbTracker:
    """One W&B run per bigbatch run (resumed by id), files under ``run_dir/wandb``; ``WANDB_MODE`` picks online or
    offline. Metrics use the training step as their x-axis, so steps repeated after a restart are kept."""

    def __init__(self, cfg: RunConfig, run_dir: Path, run_id: str | None) -> None:
        import wandb

        (run_dir / "wandb").mkdir(exist_ok=True)
        self.run_dir = run_dir
        self.run = wandb.init(
            project=cfg.tracking.project, entity=cfg.tracking.wandb_entity, name=cfg.name, id=run_id,
            resume="allow" if run_id else None, config=cfg.model_dump(mode="json"), dir=str(run_dir),
            allow_val_change=True, reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, init_timeout=60))
        self.run_id = self.run.id
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "step": step})

    def log_artifact(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


BACKENDS: dict[str, Callable[[RunConfig, Path, str | None], Tracker]] = {
    "tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


def _warn(name: str, exc: BaseException) -> None:
    if isinstance(exc, ModuleNotFoundError):
        reason = f"{exc.name} is not installed (pip install 'bigbatch[{name}]')"
    else:
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    print(f"bigbatch: warning: {name} tracking is off for this run: {reason}", file=sys.stderr)


class Trackers:
    """The configured trackers behind one call each. Any tracker error switches that tracker off with one warning
    line on stderr; nothing here raises."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        ids_path = self.run_dir / IDS_FILE
        ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
        self.active: dict[str, Tracker] = {}
        for name in dict.fromkeys(cfg.tracking.backends):
            try:
                self.active[name] = BACKENDS[name](cfg, self.run_dir, ids.get(name))
            except Exception as exc:  # noqa: BLE001 - a tracker never fails the run
                _warn(name, exc)
        ids.update({k: t.run_id for k, t in self.active.items() if t.run_id})
        if ids:
            ids_path.write_text(json.dumps(ids, indent=2))

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.active.items()):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001
                _warn(name, exc)
                del self.active[name]

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self._each(lambda t: t.log_metrics(numbers, step))

    def log_artifact(self, path: Path) -> None:
        if Path(path).is_file():
            self._each(lambda t: t.log_artifact(Path(path)))

    def close(self, failed: bool = False) -> None:
        """Finish every tracker's run (marked failed with ``failed``); later calls do nothing."""
        self._each(lambda t: t.close(failed))
        self.active.clear()
