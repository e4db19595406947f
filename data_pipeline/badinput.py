"""Bad-input accounting: skipped samples counted by kind; past ``max_bad_fraction`` an error naming shard and sample.

Kinds: ``undecodable_image`` (bytes that do not decode), ``missing_image`` (a sample without an image member),
``truncated_tar`` (samples lost because the tar stream broke: a bad header, a connection that stayed broken
after its retries, a tar cut short), ``empty_shard`` (a tar without samples), ``unreadable_shard`` (the shard
could not be opened: missing file, unreachable URL, HTTP 403/404, not a tar). Counts are in samples: a shard
listed in manifest.json loses the samples listed; a shard counted without a manifest loses an estimate (see
manifest.py). A shard that does not match its manifest (size, sample count) is not bad input but a stale
manifest: the stream refuses it (ManifestMismatch) instead of counting.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from data_pipeline.errors import UserInputError

KINDS = ("undecodable_image", "missing_image", "truncated_tar", "empty_shard", "unreadable_shard")


class BadInputError(UserInputError):
    """Too many bad samples: the message names the last bad shard and sample."""


class BadInputCounter:
    """Counts bad samples by kind against a budget of ``max_bad_fraction × planned samples``."""

    def __init__(self, planned: int, max_bad_fraction: float) -> None:
        self.planned = planned
        self.max_bad_fraction = max_bad_fraction
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, kind: str, shard: str, sample: str, n: int = 1, detail: str = "") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown bad-input kind {kind!r}")
        self.counts[kind] += n
        where = f"{kind}: shard {shard}, sample {sample}" + (f" ({detail})" if detail else "")
        if len(self.examples) < 20:
            self.examples.append(where)
        budget = self.max_bad_fraction * max(self.planned, 1)
        if self.total > budget:
            raise BadInputError(
                f"{self.total} bad samples of {self.planned} planned exceed max_bad_fraction="
                f"{self.max_bad_fraction}; last: {where}; counts: {dict(self.counts)}")


def empty_stats() -> dict[str, Any]:
    """The shape of ``loader.stats``."""
    return {"bad": dict.fromkeys(KINDS, 0), "repeated": 0, "dropped": 0, "seen": 0, "batches": 0, "bad_examples": []}


def merge_stats(total: dict[str, Any], delta: dict[str, Any]) -> None:
    """Add a per-batch stats delta (from a DataLoader worker) into the running totals, in place."""
    for kind, n in delta.get("bad", {}).items():
        total["bad"][kind] = total["bad"].get(kind, 0) + n
    for k in ("repeated", "dropped", "seen", "batches"):
        total[k] += delta.get(k, 0)
    room = 20 - len(total["bad_examples"])
    if room > 0:
        total["bad_examples"].extend(delta.get("bad_examples", [])[:room])
