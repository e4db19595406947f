"""``bigbatch shards inspect``: read and decode every sample; count samples per class and bad samples by kind.

Uses the stream's reader and decoder, so what it reports bad is what training will skip. For local shards the
sha256 of every file is checked against the manifest too.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipeline.badinput import KINDS
from data_pipeline.decode import UndecodableImage, decode, image_member
from data_pipeline.manifest import resolve_shards
from data_pipeline.tario import TruncatedShard, UnreadableShard, iter_grouped


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inspect_shards(source: Any, decode_images: bool = True) -> dict[str, Any]:
    """Per-class counts, bad samples by kind (with examples), image sizes seen, checksum mismatches."""
    manifest = resolve_shards(source)
    per_class: Counter[str] = Counter()
    bad: Counter[str] = Counter(dict.fromkeys(KINDS, 0))
    examples: list[str] = []
    sizes: Counter[str] = Counter()
    mismatched: list[str] = []
    shards_out = []
    good_total = 0

    def note(kind: str, where: str, n: int = 1) -> None:
        bad[kind] += n
        if len(examples) < 20:
            examples.append(f"{kind}: {where}")

    for i, info in enumerate(manifest.shards):
        url = manifest.url(i)
        good = got = 0
        try:
            for pos, key, files in iter_grouped(url):
                got = pos + 1
                member = image_member(files)
                if member is None:
                    note("missing_image", f"{info.name}/{key}")
                    continue
                if decode_images:
                    try:
                        img = decode(member[1])
                    except UndecodableImage as exc:
                        note("undecodable_image", f"{info.name}/{key} ({exc})")
                        continue
                    sizes[f"{img.shape[1]}x{img.shape[2]}"] += 1
                label = int(files["cls"]) if files.get("cls") else (info.labels[pos] if pos < len(info.labels) else -1)
                name = manifest.classes[label] if 0 <= label < len(manifest.classes) else str(label)
                per_class[name] += 1
                good += 1
        except UnreadableShard as exc:
            note("unreadable_shard", f"{info.name} ({exc})", max(info.samples - got, 1))
        except TruncatedShard as exc:
            note("truncated_tar", f"{info.name} ({exc})", max(info.samples - got, 1))
        else:
            if got < info.samples:
                kind = "empty_shard" if got == 0 else "truncated_tar"
                note(kind, f"{info.name} ({got} of {info.samples} samples)", info.samples - got)
            elif got == 0:
                note("empty_shard", f"{info.name} (no samples)", 1)
        if "://" not in url and info.sha256 and Path(url).exists() and _sha256(url) != info.sha256:
            mismatched.append(info.name)
        shards_out.append({"name": info.name, "expected": info.samples, "read": got, "good": good})
        good_total += good
    return {"source": str(source), "shards": len(manifest.shards), "samples_expected": manifest.num_samples,
            "samples_good": good_total, "classes": manifest.classes, "per_class": dict(sorted(per_class.items())),
            "bad": dict(bad), "bad_total": sum(bad.values()), "bad_examples": examples,
            "image_sizes": dict(sizes.most_common(5)), "checksum_mismatch": mismatched, "per_shard": shards_out}
