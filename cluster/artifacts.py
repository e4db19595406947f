"""What a finished run leaves beside its metrics: the checkpoints' PNGs (samples, reconstructions), the final
checkpoint as a local directory, and report.md."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cluster.run_dir import is_remote


def collect_artifacts(run_dir: Path, sources: Iterable[Path]) -> None:
    """Copy each checkpoint's PNGs into ``run_dir/artifacts`` before Ray prunes it."""
    for src in sources:
        for png in Path(src).glob("*.png"):
            dest = run_dir / "artifacts" / png.name
            if not dest.exists():
                dest.parent.mkdir(exist_ok=True)
                shutil.copyfile(png, dest)


def local_checkpoint(result: Any, run_dir: Path) -> Path:
    """The final checkpoint as a local directory (downloaded into the run dir when storage is remote)."""
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError(f"{run_dir}: training finished without a checkpoint")
    if not is_remote(ckpt.path):
        return Path(ckpt.path)
    dest = run_dir / "final_checkpoint"
    ckpt.to_directory(str(dest))
    return dest


def write_report(run_dir: Path) -> None:
    from eval.report import write_report as _write
    _write(run_dir)
