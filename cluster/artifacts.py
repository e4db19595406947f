"""The checkpoints' PNGs (samples, reconstructions) gathered into ``run_dir/artifacts`` before Ray prunes them."""

from __future__ import annotations

from pathlib import Path

from pretrain.run_store import RunStore


def collect_artifacts(store: RunStore, checkpoint: str, run_dir: Path) -> list[Path]:
    """Copy the PNGs of the checkpoint ``checkpoint`` (relative to the run at ``store``) into ``run_dir/artifacts``."""
    copied = []
    for src in store.fs.glob(f"{store.root}/{checkpoint}/artifacts/*.png"):
        dest = run_dir / "artifacts" / src.rsplit("/", 1)[-1]
        if not dest.exists():
            store.download(src[len(store.root) + 1:], dest)
            copied.append(dest)
    return copied

