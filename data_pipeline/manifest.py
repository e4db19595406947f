"""``manifest.json``: the shards of one split, their sample counts, bytes, sha256, keys and labels.

The manifest makes epoch lengths exact: every rank computes the same plan from it without reading a shard.
``resolve_shards`` turns any source the reader accepts (a directory or URL holding manifest.json, a manifest
URL, a brace pattern or list of .tar URLs) into a :class:`Manifest`; without a manifest, shards are counted
by reading their tar headers once. A shard that cannot be counted to its end keeps its readable samples and
records its ``failure``; its lost samples are estimated as the median sample count of the shards read
completely (at least 1) and planned like any others, so the stream and ``shards inspect`` count them as bad
of that kind (as they would count a manifest's) and ``max_bad_fraction`` sees them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.builtin import resolve_builtin
from data_pipeline.errors import UserInputError

FORMAT = "bigbatch-shards/1"
MANIFEST = "manifest.json"


@dataclass
class ShardInfo:
    name: str                 # file name (relative to the manifest) or a full URL
    samples: int
    bytes: int = 0
    sha256: str = ""
    keys: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    failure: str = ""         # counted without a manifest: "KIND: detail"; positions >= len(keys) are lost samples

    @property
    def failure_kind(self) -> str:
        return self.failure.split(":", 1)[0]


class ManifestMismatch(UserInputError):
    """manifest.json does not describe the shard on disk (size or sample count differ)."""


@dataclass
class Manifest:
    name: str
    classes: list[str]
    shards: list[ShardInfo]
    image_size: list[int] | None = None          # [H, W] when every image has it
    image_size_range: list[list[int]] | None = None  # [[min H, min W], [max H, max W]]
    split: str = "train"
    seed: int = 0
    format: str = FORMAT
    base_url: str = ""                            # where shard names are resolved (not stored)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def url(self, i: int) -> str:
        name = self.shards[i].name
        if "://" in name or name.startswith("/") or not self.base_url:
            return name
        return join_url(self.base_url, name)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("base_url")
        for shard in d["shards"]:
            if not shard["failure"]:
                del shard["failure"]
        d["num_samples"] = self.num_samples
        return d

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def from_json(cls, d: dict[str, Any], base_url: str = "", where: str = MANIFEST) -> Manifest:
        """Raises UserInputError naming ``where`` (the manifest's location) when ``d`` is not a bigbatch manifest."""
        if not isinstance(d, dict) or not isinstance(d.get("shards"), list):
            raise UserInputError(f"{where}: not a bigbatch manifest (no 'shards' list)")
        if d.get("format", FORMAT) != FORMAT:
            raise UserInputError(f"{where}: format {d.get('format')!r}, expected {FORMAT!r}")
        shards = []
        for i, s in enumerate(d["shards"]):
            try:
                info = ShardInfo(**s)
            except TypeError as exc:
                raise UserInputError(f"{where}: shard {i}: not a shard entry ({exc})") from None
            if not isinstance(info.name, str) or not info.name or not isinstance(info.samples, int) \
                    or info.samples < 0 or not isinstance(info.bytes, int):
                raise UserInputError(f"{where}: shard {i}: needs a name, samples >= 0 and bytes")
            shards.append(info)
        return cls(name=d.get("name", ""), classes=[str(c) for c in d.get("classes", [])], shards=shards,
                   image_size=d.get("image_size"), image_size_range=d.get("image_size_range"),
                   split=d.get("split", "train"), seed=d.get("seed", 0), format=d.get("format", FORMAT),
                   base_url=base_url)


def join_url(base: str, name: str) -> str:
    if "://" in base:
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def _is_url(s: str) -> bool:
    return "://" in s


def mismatch_message(url: str, what: str) -> str:
    """The one message for a manifest that does not describe its shard."""
    return (f"{url}: {what}: manifest.json does not describe this shard (an interrupted write or a changed file); "
            "write the shards again, or remove manifest.json to read the tars as they are")


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a local file (the manifest's ``sha256`` field)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(location: str | Path) -> Manifest:
    """A manifest from a directory/URL prefix holding manifest.json, or the manifest file/URL itself."""
    from data_pipeline.tario import UnreadableShard, read_url

    loc = str(location)
    if not loc.endswith(".json"):
        loc = join_url(loc, MANIFEST)
    if not _is_url(loc) and not Path(loc).is_file():
        what = "not a file" if Path(loc).exists() else "no such file"
        raise UserInputError(f"{loc}: {what}")
    try:
        raw = read_url(loc)
    except UnreadableShard as exc:
        raise UserInputError(str(exc)) from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise UserInputError(f"{loc}: not valid JSON ({exc})") from None
    base = posixpath.dirname(loc) if _is_url(loc) else str(Path(loc).parent)
    return Manifest.from_json(data, base_url=base, where=loc)


def expand_urls(source: str | list[str]) -> list[str]:
    """A brace pattern (``shard-{000000..000009}.tar``), a comma/space separated string or a list → URLs."""
    import braceexpand

    items = source if isinstance(source, list | tuple) else str(source).replace(",", " ").split()
    urls: list[str] = []
    for item in items:
        urls.extend(braceexpand.braceexpand(str(item)))
    return urls


UNLABELLED = -1  # neither a .cls member nor a manifest label: pretraining ignores it; the probe refuses it


def sample_label(files: dict[str, bytes | None], info: ShardInfo, pos: int) -> int:
    """The label of sample ``pos`` of shard ``info``: its ``.cls`` member (decimal text), else the manifest's
    ``info.labels[pos]``, else ``UNLABELLED`` (never a class)."""
    raw = files.get("cls")
    try:
        if raw:
            return int(raw)
    except ValueError:
        pass
    return info.labels[pos] if 0 <= pos < len(info.labels) else UNLABELLED


def resolve_shards(source: str | Path | list[str] | Manifest) -> Manifest:
    """Any reader source → a Manifest (read from manifest.json when there is one, else counted from the tars).
    A source that does not exist or holds no shard raises UserInputError naming it."""
    if isinstance(source, Manifest):
        return source
    if isinstance(source, Path | str):
        s = str(source)
        if s.endswith(".json"):
            return load_manifest(s)
        if not s.endswith(".tar") and "{" not in s:
            # a directory (local) or URL prefix: manifest.json, else the *.tar inside a local directory
            if _is_url(s):
                return load_manifest(s)
            p = Path(s)
            if not p.exists():
                raise UserInputError(f"{s}: no such file or directory")
            if not p.is_dir():
                raise UserInputError(f"{s}: not a shard directory (expected a directory holding manifest.json or "
                                     "*.tar, a manifest.json, a .tar file or a brace pattern)")
            if (p / MANIFEST).exists():
                return load_manifest(s)
            urls = sorted(str(t) for t in p.glob("*.tar"))
            if not urls:
                raise UserInputError(f"{s}: holds neither manifest.json nor *.tar files")
            return _counted(urls, name=p.name, source=s)
    urls = expand_urls(source)  # type: ignore[arg-type]
    if not urls:
        raise UserInputError(f"{source!r}: no shard URLs")
    return _counted(urls, name="shards", source=str(source))


_MANIFESTS: dict[str, Manifest] = {}


def load_source(source: Any) -> Manifest:
    """The manifest of a stream source (a built-in name, directory, URL, pattern or list), resolved once per process;
    a local manifest.json that was rewritten since is read again."""
    if isinstance(source, Manifest):
        return source
    source = resolve_builtin(source)
    key = repr(source)
    local = Path(str(source)) / MANIFEST if isinstance(source, str | Path) else None
    if local is not None and local.exists():
        st = local.stat()
        key += f"@{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
    if key not in _MANIFESTS:
        _MANIFESTS[key] = resolve_shards(source)
    return _MANIFESTS[key]

def _counted(urls: list[str], name: str, source: str) -> Manifest:
    """Count every shard's samples from its tar headers (see the module docstring for shards that fail)."""
    import numpy as np

    from data_pipeline.tario import TruncatedShard, UnreadableShard, iter_grouped

    shards = []
    for url in urls:
        info = ShardInfo(name=url, samples=0)
        try:
            for pos, key, files in iter_grouped(url, read=lambda ext: ext == "cls"):
                info.keys.append(key)
                info.labels.append(sample_label(files, info, pos))
        except UnreadableShard as exc:
            info.failure = f"unreadable_shard: {exc}"
        except TruncatedShard as exc:
            info.failure = f"truncated_tar: {exc}"
        else:
            if not info.keys:
                info.failure = f"empty_shard: {url}: no samples"
        if not _is_url(url):
            with contextlib.suppress(OSError):
                info.bytes = Path(url).stat().st_size
        shards.append(info)
    complete = [len(s.keys) for s in shards if not s.failure]
    typical = max(1, int(np.median(complete))) if complete else 1
    for s in shards:
        s.samples = len(s.keys) + (max(1, typical - len(s.keys)) if s.failure else 0)
    if not any(s.keys for s in shards):
        failed = [s.failure for s in shards]
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise UserInputError(f"{source}: no shard could be read: {'; '.join(failed[:5])}{more}")
    n_classes = max((max(s.labels, default=-1) for s in shards), default=-1) + 1
    return Manifest(name=name, classes=[str(c) for c in range(n_classes)], shards=shards)


def check_sizes(manifest: Manifest) -> None:
    """Raise ManifestMismatch for the first local shard whose file size is not the one the manifest lists (a
    stat per shard; missing files are left to the reader, which counts them as unreadable)."""
    for i, info in enumerate(manifest.shards):
        url = manifest.url(i)
        if info.bytes <= 0 or _is_url(url):
            continue
        try:
            size = Path(url).stat().st_size
        except OSError:
            continue
        if size != info.bytes:
            raise ManifestMismatch(mismatch_message(url, f"{size} bytes, but manifest.json lists {info.bytes}"))
