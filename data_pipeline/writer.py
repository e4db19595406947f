"""Source → ``NAME-000000.tar …`` (webdataset's ShardWriter) + ``manifest.json``, with a class-stratified holdout.

Each sample is two members, ``KEY.EXT`` (the image bytes as the source gives them) and ``KEY.cls`` (the label
as decimal text). Samples are written in a seeded random order so every shard mixes the classes; keys are
made safe (``[A-Za-z0-9_-]``) and unique. Holdout: per class, ``round(holdout × n_class)`` samples chosen by
the seed go to their own shards and manifest.

Checked before anything is written: the arguments (sizes, holdout fraction, destinations that are files, equal
or nested, or hold files the writer did not write) and every image (its header; a full decode with
``verify``): bad files are skipped and reported, or with ``strict`` refused; a class left without an image is
an error. Published atomically: each split is written to a hidden directory beside its destination; when all
are complete, the existing destinations are moved aside, the new ones renamed into place, the old removed.
A reader sees the complete old split, the complete new one, or (only between two renames) no directory at all —
never a manifest beside tars it does not describe.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipeline.decode import UndecodableImage, decode, image_size
from data_pipeline.errors import UserInputError
from data_pipeline.manifest import MANIFEST, Manifest, ShardInfo, load_manifest, sha256_file
from data_pipeline.sources import Source, open_source, safe_key
from data_pipeline.split import stratified_split


@dataclass
class WriteResult:
    """What :func:`write_shards` wrote and what it skipped (``bad``: (file, reason); ``ignored``: not images)."""

    train: Manifest
    out_dir: Path
    holdout: Manifest | None = None
    holdout_dir: Path | None = None
    bad: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


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
    """(H, W) from the header, None when there is none (checked before writing; only a size found is recorded)."""
    try:
        return image_size(data)
    except UndecodableImage:
        return None


def check_image(src: Source, i: int, verify: bool = False) -> str:
    """Why sample ``i`` of ``src`` is not a usable image ('' when it is): its header is parsed (an image folder's
    file is read only that far); with ``verify`` the image is fully decoded by the stream's decoder."""
    from PIL import Image, UnidentifiedImageError

    try:
        if src.files is not None and not verify:
            if src.files[i].stat().st_size == 0:
                return "empty file (0 bytes)"
            with Image.open(src.files[i]):
                return ""
        data, _ = src.read(i)
        if not data:
            return "empty file (0 bytes)"
        if verify:
            try:
                decode(data)
            except UndecodableImage as exc:
                return f"does not decode ({exc})"
            return ""
        with Image.open(io.BytesIO(data)):
            return ""
    except UnidentifiedImageError:
        return "not an image (no known image header)"
    except Exception as exc:  # noqa: BLE001 — any failure to parse the header
        return f"not an image ({type(exc).__name__}: {exc})"


def _describe(src: Source, i: int) -> str:
    return str(src.files[i]) if src.files is not None else src.names[i]


def _listing(items: list[str], limit: int = 5) -> str:
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.bigbatch-"


def _check_destination(dest: Path, role: str) -> None:
    """A destination must be new, empty, or a shard directory whose every file its manifest lists."""
    if dest.is_symlink() and not dest.exists():
        raise UserInputError(f"{dest}: {role} is a broken symbolic link")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise UserInputError(f"{dest}: {role} exists and is not a directory")
    entries = sorted(p.name for p in dest.iterdir())
    listed = {MANIFEST, MANIFEST + ".tmp"}
    if MANIFEST in entries:
        with contextlib.suppress(UserInputError):
            listed |= {s.name for s in load_manifest(dest).shards}
    others = [e for e in entries if e not in listed]
    if others:
        raise UserInputError(f"{dest}: {role} is not empty and holds files that `bigbatch shards write` did not "
                             f"write ({_listing(others, 3)}): choose a new or empty directory")


def _write_split(src: Source, indices: list[int], keys: list[str], out_dir: Path, name: str, split: str,
                 shard_size: int, max_shard_bytes: int, seed: int) -> Manifest:
    """Write ``indices`` of ``src`` as shards + manifest.json into the (new, empty) ``out_dir``."""
    from webdataset import ShardWriter

    shards: list[ShardInfo] = []
    sizes: list[tuple[int, int]] = []

    def finished(fname: str) -> None:
        if shards:
            shards[-1].bytes = Path(fname).stat().st_size
            shards[-1].sha256 = sha256_file(fname)

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
    manifest = Manifest(name=name, classes=list(src.classes), shards=shards, split=split, seed=seed,
                        base_url=str(out_dir))
    if sizes:
        arr = np.asarray(sizes)
        lo, hi = arr.min(0).tolist(), arr.max(0).tolist()
        manifest.image_size = lo if lo == hi else None
        manifest.image_size_range = [lo, hi]
    manifest.save(out_dir)
    return manifest


def _publish(moves: list[tuple[Path, Path]]) -> None:
    """Rename each finished temporary directory onto its destination: every existing destination is moved
    aside first (so old and new splits are never side by side), the old ones are removed last. On an error
    the old destinations are put back."""
    aside: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for _, dest in moves:
            if dest.exists():
                old = dest.with_name(f"{_temp_prefix(dest)}{os.getpid()}-old-{secrets.token_hex(4)}")
                os.rename(dest, old)
                aside.append((dest, old))
        for tmp, dest in moves:
            os.rename(tmp, dest)
            placed.append(dest)
    except BaseException:
        for dest in placed:
            shutil.rmtree(dest, ignore_errors=True)
        for dest, old in aside:
            if not dest.exists():
                os.rename(old, dest)
        raise
    for _, old in aside:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(dest: Path) -> None:
    """Temporary directories beside ``dest`` left by writers that were killed (their process is gone)."""
    prefix = _temp_prefix(dest)
    for p in dest.parent.glob(glob.escape(prefix) + "*"):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def write_shards(source: str | Source, out_dir: str | Path, shard_size: int = 1000, holdout: float = 0.0,
                 holdout_dir: str | Path | None = None, seed: int = 0, name: str | None = None,
                 max_shard_bytes: int = 1 << 30, verify: bool = False, strict: bool = False) -> WriteResult:
    """Write ``source`` as shards (+ ``holdout_dir`` shards of a class-stratified ``holdout`` fraction; default
    ``OUT_DIR-holdout``), checked first and published atomically (see the module docstring). Every mistake in
    the arguments or the source, and a failed write (disk full, …), raises UserInputError naming it."""
    try:
        return _write(source, Path(out_dir), shard_size, holdout, holdout_dir, seed, name, max_shard_bytes, verify,
                      strict)
    except OSError as exc:
        what = f"{exc.filename}: " if exc.filename else ""
        raise UserInputError(f"{what}{exc.strerror or exc} (writing {out_dir} stopped; it was left as it was)") from exc


def _write(source: str | Source, out_dir: Path, shard_size: int, holdout: float, holdout_dir: str | Path | None,
           seed: int, name: str | None, max_shard_bytes: int, verify: bool, strict: bool) -> WriteResult:
    if shard_size < 1:
        raise UserInputError(f"shard size {shard_size}: must be >= 1")
    if max_shard_bytes < 1:
        raise UserInputError(f"max shard bytes {max_shard_bytes}: must be >= 1")
    if not 0.0 <= holdout < 1.0:
        raise UserInputError(f"holdout {holdout}: not in [0, 1)")
    hdir = None
    if holdout > 0:
        hdir = Path(holdout_dir) if holdout_dir is not None else out_dir.with_name(out_dir.name + "-holdout")
        a, b = out_dir.resolve(), hdir.resolve()
        if a == b or a in b.parents or b in a.parents:
            raise UserInputError(f"holdout dir {hdir} and output dir {out_dir}: must be two separate directories")
    elif holdout_dir is not None:
        raise UserInputError(f"holdout dir {holdout_dir}: given without --holdout (a fraction > 0)")
    _check_destination(out_dir, "the output")
    if hdir is not None:
        _check_destination(hdir, "the holdout dir")
    if isinstance(source, str | Path) and Path(source).is_dir():
        root = Path(source).resolve()
        for dest in (out_dir, hdir):
            if dest is not None and (dest.resolve() == root or root in dest.resolve().parents):
                raise UserInputError(f"{dest}: inside the source {source}: its shards would be read as a class")
    src = open_source(source)
    if len(src) == 0:
        raise UserInputError(f"{source}: no samples")

    bad_idx = [(i, why) for i in range(len(src)) if (why := check_image(src, i, verify))]
    bad = [(_describe(src, i), why) for i, why in bad_idx]
    if bad and strict:
        files = f"{len(bad)} bad image file{'s' * (len(bad) != 1)}"
        raise UserInputError(f"{source}: {files} (--strict refuses them; nothing was written): "
                             + _listing([f"{f} ({why})" for f, why in bad]))
    skip = {i for i, _ in bad_idx}
    good = [i for i in range(len(src)) if i not in skip]
    have = {src.labels[i] for i in good}
    empty = [c for label, c in enumerate(src.classes) if label not in have]
    if empty:
        classes = f"{len(empty)} class{'es' * (len(empty) != 1)}"
        raise UserInputError(f"{source}: {classes} without a readable image: {_listing(empty)} "
                             "(remove their folders or add images)")

    name = safe_key(name or src.name)
    keys = unique_keys(src.names)
    if holdout > 0:
        tr, ho = stratified_split([src.labels[i] for i in good], holdout, seed)
        train_idx, hold_idx = [good[j] for j in tr], [good[j] for j in ho]
        if not hold_idx or not train_idx:
            which = "holdout" if not hold_idx else "training split"
            raise UserInputError(f"holdout {holdout}: leaves the {which} without samples ({len(good)} samples, "
                                 f"rounded per class)")
    else:
        train_idx, hold_idx = good, []
    rng = np.random.default_rng([seed, 104729])
    train_idx = rng.permutation(train_idx).tolist()
    hold_idx = rng.permutation(hold_idx).tolist()

    plan = [(out_dir, train_idx, "train")] + ([(hdir, hold_idx, "holdout")] if hdir is not None else [])
    temps: list[Path] = []
    manifests = []
    try:
        for dest, idx, split in plan:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"{_temp_prefix(dest)}{os.getpid()}-{secrets.token_hex(4)}")
            tmp.mkdir()
            temps.append(tmp)
            m = _write_split(src, idx, keys, tmp, name, split, shard_size, max_shard_bytes, seed)
            m.base_url = str(dest)
            manifests.append(m)
        _publish([(tmp, dest) for tmp, (dest, _, _) in zip(temps, plan, strict=True)])
    finally:
        for tmp in temps:
            shutil.rmtree(tmp, ignore_errors=True)
    for dest, _, _ in plan:
        _remove_leftovers(dest)
    return WriteResult(train=manifests[0], out_dir=out_dir, holdout=manifests[1] if hdir is not None else None,
                       holdout_dir=hdir, bad=bad, ignored=list(src.ignored))
