"""A run's directory: where it lives (``cluster.storage_path/name``), its name, and the compatibility check on a rerun.

A rerun of the same name resumes; it must keep the sections that shape the model and the data order.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import yaml

from cluster.run_config import ConfigError, dump_yaml
from pretrain.config import RunConfig

DEFAULT_STORAGE = Path(os.environ.get("BIGBATCH_RUNS", "~/bigbatch_runs")).expanduser()
COMPAT_SECTIONS = ("method", "batch_size", "seed", "model", "loss", "vae", "gan")


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def default_name(cfg: RunConfig) -> str:
    what = cfg.loss.name if cfg.method == "simclr" else (cfg.gan.loss if cfg.method == "gan" else cfg.method)
    return f"{cfg.method}-{what}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: RunConfig) -> tuple[str, Path]:
    """(storage path for Ray, local run dir). Writes config.yaml; on a rerun checks the config still fits."""
    storage = cfg.cluster.storage_path or str(DEFAULT_STORAGE)
    if is_remote(storage):
        local = DEFAULT_STORAGE / cfg.name
    else:
        storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
        local = Path(storage) / cfg.name
    local.mkdir(parents=True, exist_ok=True)
    cfg_path = local / "config.yaml"
    if cfg_path.exists():
        old = RunConfig.model_validate(yaml.safe_load(cfg_path.read_text()))
        diffs = [k for k in COMPAT_SECTIONS if getattr(old, k) != getattr(cfg, k)]
        if diffs:
            raise ConfigError(f"run {cfg.name!r} exists in {local} with a different {', '.join(diffs)}: "
                              "resume it with its own config, or pick another name")
    cfg_path.write_text(dump_yaml(cfg))
    return storage, local
