"""``bigbatch shards inspect``: read and decode every sample; count samples per class and bad samples by kind.

Uses the stream's reader and decoder, so what it reports bad is what training will skip. Its figures add up:
``samples_good + bad_total + samples_mismatched == samples_expected``, where a shard that does not match its
manifest (size or sample count) is reported in ``manifest_mismatch`` with its listed samples in
``samples_mismatched`` (training refuses such a shard). For local shards the sha256 of every file is checked
against the manifest too.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data_pipeline.badinput import KINDS
from data_pipeline.manifest import (
    ManifestMismatch,
    mismatch_message,
    resolve_shards,
    sample_label,
    sha256_file,
)


def inspect_shards(source: Any, decode_images: bool = True) -> dict[str, Any]:
    """Per-class counts, bad samples by kind (with examples), image sizes seen, manifest and checksum mismatches."""
    manifest = resolve_shards(source)  # a wrong path fails here, before the decoder's torch import (seconds)
    from data_pipeline.decode import UndecodableImage, decode, image_member
    from data_pipeline.tario import TruncatedShard, UnreadableShard, iter_grouped

    per_class: Counter[str] = Counter()
    bad: Counter[str] = Counter(dict.fromkeys(KINDS, 0))
    examples: list[str] = []
    sizes: Counter[str] = Counter()
    mismatched: list[str] = []
    checksum: list[str] = []
    shards_out = []
    good_total = mismatched_samples = 0

    def note(kind: str, where: str, n: int = 1) -> None:
        bad[kind] += n
        if len(examples) < 20:
            examples.append(f"{kind}: {where}")

    def record(shard_notes: list[tuple[str, str]], shard_classes: Counter[str]) -> None:
        for kind, where in shard_notes:
            note(kind, where)
        per_class.update(shard_classes)

    for i, info in enumerate(manifest.shards):
        url = manifest.url(i)
        readable = len(info.keys) if info.failure else None   # counted without a manifest
        good = got = 0
        failure: tuple[str, str] | None = None
        mismatch = ""
        notes: list[tuple[str, str]] = []
        classes: Counter[str] = Counter()
        try:
            for pos, key, files in iter_grouped(url, expect_bytes=info.bytes):
                if readable is not None and pos >= readable:
                    break
                got = pos + 1
                member = image_member(files)
                if member is None:
                    notes.append(("missing_image", f"{info.name}/{key}"))
                    continue
                if decode_images:
                    try:
                        img = decode(member[1])
                    except UndecodableImage as exc:
                        notes.append(("undecodable_image", f"{info.name}/{key} ({exc})"))
                        continue
                    sizes[f"{img.shape[1]}x{img.shape[2]}"] += 1
                label = sample_label(files, info, pos)
                name = manifest.classes[label] if 0 <= label < len(manifest.classes) else str(label)
                classes[name] += 1
                good += 1
        except ManifestMismatch as exc:
            mismatch = str(exc)
        except UnreadableShard as exc:
            failure = ("unreadable_shard", str(exc))
        except TruncatedShard as exc:
            failure = ("truncated_tar", str(exc))
        if readable is not None:
            failure = (info.failure_kind, info.failure.split(": ", 1)[-1])
        elif not mismatch and not failure and got != info.samples:
            mismatch = mismatch_message(url, f"{got} samples, but manifest.json lists {info.samples}")
        if mismatch:
            mismatched.append(mismatch)
            mismatched_samples += info.samples
            good = 0
        else:
            record(notes, classes)
            if failure:
                lost = max(info.samples - got, 0)
                estimated = " estimated: no manifest.json" if readable is not None else ""
                note(failure[0], f"{failure[1]} [{lost} samples{estimated}]", lost)
        if not mismatch and "://" not in url and info.sha256 and Path(url).exists() and sha256_file(url) != info.sha256:
            checksum.append(info.name)
        shards_out.append({"name": info.name, "expected": info.samples, "read": got, "good": good,
                           "failure": failure[0] if failure else "", "mismatch": bool(mismatch)})
        good_total += good
    return {"source": str(source), "shards": len(manifest.shards), "samples_expected": manifest.num_samples,
            "samples_good": good_total, "samples_mismatched": mismatched_samples, "classes": manifest.classes,
            "per_class": dict(sorted(per_class.items())), "bad": dict(bad), "bad_total": sum(bad.values()),
            "bad_examples": examples, "image_sizes": dict(sizes.most_common(5)), "manifest_mismatch": mismatched,
            "checksum_mismatch": checksum, "per_shard": shards_out}
