"""``manifest.json``: the shards of one split, their sample counts, bytes, sha256, keys and labels.

The manifest makes epoch lengths exact: every rank computes the same plan from it without reading a shard.
``resolve_shards`` turns any source the reader accepts (a directory or URL holding manifest.json, a manifest
URL, a brace pattern or list of .tar URLs) into a :class:`Manifest`; without a manifest, shards are counted
by reading their tar headers once.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
        d["num_samples"] = self.num_samples
        return d

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def from_json(cls, d: dict[str, Any], base_url: str = "") -> Manifest:
        shards = [ShardInfo(**s) for s in d["shards"]]
        return cls(name=d.get("name", ""), classes=list(d.get("classes", [])), shards=shards,
                   image_size=d.get("image_size"), image_size_range=d.get("image_size_range"),
                   split=d.get("split", "train"), seed=d.get("seed", 0), format=d.get("format", FORMAT),
                   base_url=base_url)


def join_url(base: str, name: str) -> str:
    if "://" in base:
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def _is_url(s: str) -> bool:
    return "://" in s


def load_manifest(location: str | Path) -> Manifest:
    """A manifest from a directory/URL prefix holding manifest.json, or the manifest file/URL itself."""
    import fsspec

    loc = str(location)
    if not loc.endswith(".json"):
        loc = join_url(loc, MANIFEST)
    with fsspec.open(loc, "rb") as f:
        raw = f.read()
    base = posixpath.dirname(loc) if _is_url(loc) else str(Path(loc).parent)
    try:
        return Manifest.from_json(json.loads(raw), base_url=base)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserInputError(f"{loc}: not a valid bigbatch manifest ({type(exc).__name__}: {exc})") from exc


def expand_urls(source: str | list[str]) -> list[str]:
    """A brace pattern (``shard-{000000..000009}.tar``), a comma/space separated string or a list → URLs."""
    import braceexpand

    items = source if isinstance(source, list | tuple) else str(source).replace(",", " ").split()
    urls: list[str] = []
    for item in items:
        urls.extend(braceexpand.braceexpand(str(item)))
    return urls


def count_shard(url: str) -> tuple[list[str], list[int]]:
    """Keys and labels of one shard by reading its tar headers (labels from ``.cls`` members, else -1)."""
    from data_pipeline.tario import iter_members_grouped

    keys: list[str] = []
    labels: list[int] = []
    for key, files in iter_members_grouped(url, read=lambda ext: ext == "cls"):
        keys.append(key)
        cls = files.get("cls")
        labels.append(int(cls) if cls else -1)
    return keys, labels


def resolve_shards(source: str | Path | list[str] | Manifest) -> Manifest:
    """Any reader source → a Manifest (read from manifest.json when there is one, else counted from the tars)."""
    if isinstance(source, Manifest):
        return source
    if isinstance(source, Path | str) and not isinstance(source, list):
        s = str(source)
        if s.endswith(".json"):
            return load_manifest(s)
        if not s.endswith(".tar") and "{" not in s:
            # a directory (local) or URL prefix: manifest.json, else the *.tar inside a local directory
            p = Path(s)
            if not _is_url(s) and p.is_dir() and not (p / MANIFEST).exists():
                urls = sorted(str(t) for t in p.glob("*.tar"))
                if not urls:
                    raise FileNotFoundError(f"{s}: neither manifest.json nor *.tar")
                return _counted(urls, name=p.name)
            return load_manifest(s)
    urls = expand_urls(source)  # type: ignore[arg-type]
    if not urls:
        raise ValueError(f"{source!r}: no shard URLs")
    return _counted(urls, name="shards")


def _counted(urls: list[str], name: str) -> Manifest:
    shards = []
    for url in urls:
        try:
            keys, labels = count_shard(url)
        except Exception:  # unreadable: the stream will count its samples as bad when it meets them
            keys, labels = [], []
        shards.append(ShardInfo(name=url, samples=len(keys), keys=keys, labels=labels))
    n_classes = max((max(s.labels, default=-1) for s in shards), default=-1) + 1
    return Manifest(name=name, classes=[str(c) for c in range(n_classes)], shards=shards)
