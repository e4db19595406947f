"""The checkpoints' PNGs (samples, reconstructions) gathered into ``run_dir/artifacts`` before Ray prunes them."""

from __future__ import annotations

from pathlib import Path

from pretrain.run_store import RunStore


def collect_artifacts(store: RunStore, checkpoint: str, run_dir: Path) -> list[Path]:
    """Copy the PNGs of the checkpoint ``checkpoint`` (relative to the run at ``store``) into ``run_dir/artifacts``:
    those missing there or of another size than in storage (a copy taken while Ray was still writing the file)."""
    copied = []
    found = store.fs.glob(f"{store.root}/{checkpoint}/artifacts/*.png", detail=True)
    for src, info in sorted(found.items()):
        dest = run_dir / "artifacts" / src.rsplit("/", 1)[-1]
        if not dest.exists() or dest.stat().st_size != info.get("size"):
            store.download(src[len(store.root) + 1:], dest)
            copied.append(dest)
    return copied
