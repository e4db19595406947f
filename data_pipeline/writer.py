"""Source → ``NAME-000000.tar …`` (webdataset's ShardWriter) + ``manifest.json``, with a class-stratified holdout.

Each sample is two members, ``KEY.EXT`` (the image bytes as the source gives them) and ``KEY.cls`` (the label
as decimal text). Samples are written in a seeded random order so every shard mixes the classes; keys are
made safe (``[A-Za-z0-9_-]``) and unique. Holdout: per class, ``round(holdout × n_class)`` samples chosen by
the seed go to their own shards and manifest.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from data_pipeline.manifest import Manifest, ShardInfo
from data_pipeline.sources import Source, open_source, safe_key


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, holdout): per class, ``round(fraction × n_class)`` seeded picks go to the holdout."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction {fraction} not in [0, 1)")
    rng = np.random.default_rng([seed, 7919])
    labels_arr = np.asarray(labels)
    hold: list[int] = []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        k = int(round(fraction * len(idx)))
        hold.extend(rng.permutation(idx)[:k].tolist())
    hold_set = set(hold)
    return [i for i in range(len(labels)) if i not in hold_set], sorted(hold)


def unique_keys(names: list[str]) -> list[str]:
    """Safe keys, made unique by a ``_N`` suffix on collisions."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        base = safe_key(name)
        key, n = base, seen.get(base, 0)
        while key in seen:
            n += 1
            key = f"{base}_{n}"
        seen[base] = n
        seen.setdefault(key, 0)
        keys.append(key)
    return keys


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 — an unreadable image is written anyway; the reader counts it
        return None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_split(src: Source, indices: list[int], keys: list[str], out_dir: Path, name: str, split: str,
                 shard_size: int, max_shard_bytes: int, seed: int) -> Manifest:
    from webdataset import ShardWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{name}-*.tar"):
        old.unlink()
    shards: list[ShardInfo] = []
    sizes: list[tuple[int, int]] = []

    def finished(fname: str) -> None:
        if not shards:
            return
        shards[-1].bytes = Path(fname).stat().st_size
        shards[-1].sha256 = _sha256(fname)

    pattern = str(out_dir / f"{name}-%06d.tar")
    with ShardWriter(pattern, maxcount=shard_size, maxsize=max_shard_bytes, post=finished, verbose=0,
                     encoder=False, mtime=0) as sink:
        for i in indices:
            data, ext = src.read(i)
            if shards and (sink.count >= sink.maxcount or sink.size >= sink.maxsize):
                sink.next_stream()  # roll over now (ShardWriter would on this write) to know the new name
            if not shards or sink.count == 0:
                shards.append(ShardInfo(name=Path(sink.fname).name, samples=0))
            label = src.labels[i]
            sink.write({"__key__": keys[i], ext: data, "cls": str(label).encode()})
            shards[-1].samples += 1
            shards[-1].keys.append(keys[i])
            shards[-1].labels.append(label)
            hw = _image_size(data)
            if hw:
                sizes.append(hw)
    if not shards:
        # ShardWriter opened (and closed) one empty stream: record it honestly
        only = out_dir / f"{name}-000000.tar"
        shards.append(ShardInfo(name=only.name, samples=0, bytes=only.stat().st_size, sha256=_sha256(str(only))))
    manifest = Manifest(name=name, classes=list(src.classes), shards=shards, split=split, seed=seed,
                        base_url=str(out_dir))
    if sizes:
        arr = np.asarray(sizes)
        lo, hi = arr.min(0).tolist(), arr.max(0).tolist()
        manifest.image_size = lo if lo == hi else None
        manifest.image_size_range = [lo, hi]
    manifest.save(out_dir)
    return manifest


def write_shards(source: str | Source, out_dir: str | Path, shard_size: int = 1000, holdout: float = 0.0,
                 holdout_dir: str | Path | None = None, seed: int = 0, name: str | None = None,
                 max_shard_bytes: int = 1 << 30) -> Manifest:
    """Write ``source`` as shards (+ ``holdout_dir`` shards of a class-stratified ``holdout`` fraction; default
    ``OUT_DIR-holdout``). Returns the main split's manifest."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    src = open_source(source)
    if len(src) == 0:
        raise ValueError(f"{source}: no samples")
    out_dir = Path(out_dir)
    name = safe_key(name or src.name)
    keys = unique_keys(src.names)
    train_idx, hold_idx = stratified_split(src.labels, holdout, seed) if holdout > 0 else (list(range(len(src))), [])
    rng = np.random.default_rng([seed, 104729])
    train_idx = rng.permutation(train_idx).tolist()
    manifest = _write_split(src, train_idx, keys, out_dir, name, "train", shard_size, max_shard_bytes, seed)
    if holdout > 0:
        hdir = Path(holdout_dir) if holdout_dir is not None else out_dir.with_name(out_dir.name + "-holdout")
        if hdir.resolve() == out_dir.resolve():
            raise ValueError("holdout_dir must differ from out_dir")
        hold_idx = rng.permutation(hold_idx).tolist()
        _write_split(src, hold_idx, keys, hdir, name, "holdout", shard_size, max_shard_bytes, seed)
    return manifest

