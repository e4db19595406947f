"""A run's directory: where it lives (``cluster.storage_path/name``), its name, and the compatibility check on a rerun.

With a local storage path the run directory is ``storage_path/name`` itself. With a URL (s3://, gs://, …) the
driver works in a local copy (``$BIGBATCH_RUNS/name``) mirrored to ``storage_path/name`` at every checkpoint and
at the end; a rerun pulls the bucket's copy first, so a run resumes from the bucket alone.
A rerun of the same name resumes; it must keep the sections that shape the model and the data order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from cluster.run_config import ConfigError, dump_yaml
from pretrain.config import RunConfig
from pretrain.run_store import SUMMARY_FILE, RunMirror, RunStore, is_url, local_path

DEFAULT_STORAGE = Path(os.environ.get("BIGBATCH_RUNS", "~/bigbatch_runs")).expanduser()
COMPAT_SECTIONS = ("method", "batch_size", "seed", "model", "loss", "vae", "gan")


@dataclass
class RunDir:
    storage: str               # Ray Train's storage_path: a URL or an absolute local path
    local: Path                # the driver's working copy (the run directory itself when storage is local)
    mirror: RunMirror | None   # the copy at storage/name when storage is a URL

    @property
    def url(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.local.name}"

    def sync(self) -> None:
        if self.mirror is not None:
            self.mirror.sync()


def default_name(cfg: RunConfig) -> str:
    what = cfg.loss.name if cfg.method == "simclr" else (cfg.gan.loss if cfg.method == "gan" else cfg.method)
    return f"{cfg.method}-{what}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: RunConfig) -> RunDir:
    """The run's directory, with config.yaml written; on a rerun checks the config still fits and drops the old
    train_summary.json (the run is not complete until this attempt finishes)."""
    storage = cfg.cluster.storage_path or str(DEFAULT_STORAGE)
    mirror = None
    if is_url(storage):
        local = DEFAULT_STORAGE / cfg.name
        local.mkdir(parents=True, exist_ok=True)
        try:  # the first contact with the storage path: any failure means it cannot be used
            mirror = RunMirror(local, RunStore(f"{storage.rstrip('/')}/{cfg.name}"))
            if mirror.store.exists("config.yaml"):  # the bucket is the run's truth: resume from its files
                mirror.pull()
        except Exception as exc:  # noqa: BLE001
            raise _unusable(storage, exc) from exc
    else:
        storage = str(local_path(storage))
        local = Path(storage) / cfg.name
        local.mkdir(parents=True, exist_ok=True)
    cfg_path = local / "config.yaml"
    if cfg_path.exists():
        old = RunConfig.model_validate(yaml.safe_load(cfg_path.read_text()))
        diffs = [k for k in COMPAT_SECTIONS if getattr(old, k) != getattr(cfg, k)]
        if diffs:
            raise ConfigError(f"run {cfg.name!r} exists in {storage.rstrip('/')}/{cfg.name} with a different "
                              f"{', '.join(diffs)}: resume it with its own config, or pick another name")
    if mirror is not None:
        mirror.remove(SUMMARY_FILE)
    else:
        (local / SUMMARY_FILE).unlink(missing_ok=True)
    cfg_path.write_text(dump_yaml(cfg))
    run_dir = RunDir(storage, local, mirror)
    try:
        run_dir.sync()
    except Exception as exc:  # noqa: BLE001
        raise _unusable(storage, exc) from exc
    return run_dir


def _unusable(storage: str, exc: Exception) -> ConfigError:
    reason = (str(exc).strip().splitlines() or [""])[0][:300]
    return ConfigError(f"cluster.storage_path={storage}: cannot be used: {type(exc).__name__}: {reason}")
