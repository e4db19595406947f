"""The built-in default data: scikit-learn's digits as shards in the cache, written once.

``ensure_digits()`` → ``(train_dir, holdout_dir)`` under ``$BIGBATCH_CACHE`` (default ``~/.cache/bigbatch``):
an 80/20 class-stratified split. ``resolve_builtin(source)``: the one place the names ``digits`` and
``digits-holdout`` become those directories. Writing goes to a private temp directory renamed into place, so two
processes racing on first use both end with the same complete shards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

DIGITS_VERSION = "digits-v1"
DIGITS_SHARD_SIZE = 256
DIGITS_HOLDOUT = 0.2
BUILTIN_SOURCES = ("digits", "digits-holdout")  # (train, holdout) of the built-in split


def cache_root(cache: str | Path | None = None) -> Path:
    """``cache`` or ``$BIGBATCH_CACHE`` or ``~/.cache/bigbatch`` (created)."""
    root = Path(cache) if cache else Path(os.environ.get("BIGBATCH_CACHE") or Path.home() / ".cache" / "bigbatch")
    root.mkdir(parents=True, exist_ok=True)
    return root


def ensure_digits(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The digits shards (train, holdout), written on first use."""
    from data_pipeline.writer import (
        write_shards,  # numpy and PIL: not at the CLI's start-up (commands import this)
    )

    root = cache_root(cache_dir)
    final = root / DIGITS_VERSION
    train, holdout = final / "train", final / "holdout"
    if (train / "manifest.json").exists() and (holdout / "manifest.json").exists():
        return train, holdout
    tmp = Path(tempfile.mkdtemp(prefix=f".{DIGITS_VERSION}-", dir=root))
    try:
        write_shards("digits", tmp / "train", shard_size=DIGITS_SHARD_SIZE, holdout=DIGITS_HOLDOUT,
                     holdout_dir=tmp / "holdout", seed=0)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race (or a stale partial dir is in the way)
            if not (train / "manifest.json").exists():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return train, holdout


def resolve_builtin(source: Any) -> Any:
    """``'digits'`` → the built-in training shards, ``'digits-holdout'`` → its holdout (as ``str`` paths, written on
    first use); any other source unchanged."""
    if isinstance(source, str) and source in BUILTIN_SOURCES:
        return str(ensure_digits()[BUILTIN_SOURCES.index(source)])
    return source
