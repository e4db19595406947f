"""A run's directory: where it lives (``cluster.storage_path/name``), its name, and the compatibility check on a rerun.

With a local storage path the run directory is ``storage_path/name`` itself. With a URL (s3://, gs://, …) the
driver works in a local copy (``$BIGBATCH_RUNS/name``) mirrored to ``storage_path/name`` at every checkpoint and
at the end; a rerun pulls the bucket's copy first, so a run resumes from the bucket alone.
A rerun of the same name resumes; it must keep what the checkpoint's model, optimiser state and stream position were
made for (RESUME_CHECKED) unless allowed; config.yaml always keeps the run's first config.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from cluster.run_config import ConfigError, dump_yaml
from pretrain.config import RunConfig, from_stored
from pretrain.run_store import SUMMARY_FILE, RunMirror, RunStore, is_url, local_path, write_text_atomic

DEFAULT_STORAGE = Path(os.environ.get("BIGBATCH_RUNS", "~/bigbatch_runs")).expanduser()
# What a resumed run (same name) may not change without --allow-changes: what the checkpoint's model, optimiser state
# and stream position were made for (dotted prefixes).
RESUME_CHECKED = ("method", "batch_size", "seed", "model", "loss", "optim", "vae", "gan", "data.train", "data.image_size",
                  "data.view_size", "data.lanes", "data.local_views", "data.local_size", "data.local_scale", "data.global_scale",
                  "data.blur", "data.color_strength")


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
    return f"{cfg.method}-{cfg.variant}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: RunConfig, allow_changes: bool = False) -> RunDir:
    """The run's directory, with config.yaml written. On a rerun: a change of a RESUME_CHECKED key is refused unless
    ``allow_changes``; any changed config goes to config-resume-N.yaml (config.yaml keeps the first); the old
    train_summary.json is dropped (the run is not complete until this attempt finishes)."""
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
        _check_resume(cfg, cfg_path, f"{storage.rstrip('/')}/{cfg.name}", allow_changes)
    else:
        write_text_atomic(cfg_path, dump_yaml(cfg))
    if mirror is not None:
        mirror.remove(SUMMARY_FILE)
    else:
        (local / SUMMARY_FILE).unlink(missing_ok=True)
    run_dir = RunDir(storage, local, mirror)
    try:
        run_dir.sync()
    except Exception as exc:  # noqa: BLE001
        raise _unusable(storage, exc) from exc
    return run_dir


def _check_resume(cfg: RunConfig, cfg_path: Path, where: str, allow_changes: bool) -> None:
    try:
        old = from_stored(yaml.safe_load(cfg_path.read_text()))
    except (yaml.YAMLError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{cfg_path}: not a readable bigbatch config ({' '.join(str(exc).split())[:300]}); "
                          "pick another run name") from exc
    changed = changed_keys(old, cfg)
    if not changed:
        return
    shown = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())
    refused = [k for k in changed if any(k == c or k.startswith(c + ".") for c in RESUME_CHECKED)]
    if refused and not allow_changes:
        raise ConfigError(f"run {cfg.name!r} in {where} was started with another config ({shown}): resume it with "
                          "its own config, pick another name, or pass --allow-changes")
    n = 1 + len(list(cfg_path.parent.glob("config-resume-*.yaml")))
    write_text_atomic(cfg_path.parent / f"config-resume-{n}.yaml", dump_yaml(cfg))
    print(f"bigbatch: run {cfg.name!r} continues with changed {shown}; config.yaml keeps the original config, "
          f"the new one is config-resume-{n}.yaml", file=sys.stderr)


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


def _unusable(storage: str, exc: Exception) -> ConfigError:
    reason = (str(exc).strip().splitlines() or [""])[0][:300]
    return ConfigError(f"cluster.storage_path={storage}: cannot be used: {type(exc).__name__}: {reason}")
