"""The epoch plan: which samples each (rank, DataLoader worker) reads, in batches, so every rank gets the same
number of steps. ``bigbatch shards plan`` prints it and the stream executes it (one code path).

Exact mode: shards are ordered by a permutation seeded by (seed, epoch); the concatenated sample sequence
is cut into contiguous per-rank ranges and, within a rank, into per-worker ranges (cuts may fall inside a
shard: a reader skips the first samples of such a shard without decoding them). With ``equalize`` every
rank gets ``S = ceil(N / (W·B))`` full batches; the ``S·W·B − N`` extra samples repeat the start of the
sequence (``remainder="drop"``: ``S = floor``, the tail is dropped). Without ``equalize`` (the probe pass)
each sample is read exactly once and a rank's last batch may be partial.
Resampled mode: the same nominal epoch length; each worker draws whole shards with replacement from a
generator seeded by (seed, epoch, rank, worker).
Rank batch ``i`` is served by worker ``i mod K`` (the DataLoader's round-robin order).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Mode = Literal["exact", "resampled"]


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of shard ``shard`` (index into the manifest); ``lap`` > 0 marks a repeat."""

    shard: int
    start: int
    stop: int
    lap: int = 0

    @property
    def samples(self) -> int:
        return self.stop - self.start


@dataclass
class WorkerPlan:
    rank: int
    worker: int
    batch_ids: list[int]       # this rank's batch indices served by this worker
    batch_sizes: list[int]
    segments: list[Segment]
    repeated: int = 0

    @property
    def samples(self) -> int:
        return sum(self.batch_sizes)


@dataclass
class RankPlan:
    rank: int
    steps: int
    samples: int
    repeated: int
    workers: list[WorkerPlan] = field(default_factory=list)


@dataclass
class EpochPlan:
    mode: str
    epoch: int
    seed: int
    world_size: int
    num_workers: int
    batch_size: int
    equalize: bool
    num_samples: int           # in the dataset
    steps: int                 # per rank (the largest, when not equalized)
    repeated: int
    dropped: int
    shard_order: list[int]
    ranks: list[RankPlan]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size:
        sizes.append(n % batch_size)
    return sizes


def _split_batches(sizes: list[int], k: int) -> list[tuple[list[int], list[int]]]:
    """Round-robin: worker w serves batches w, w+k, … → (ids, sizes) per worker."""
    return [(list(range(w, len(sizes), k)), sizes[w::k]) for w in range(k)]


class _Sequence:
    """The epoch's sample order: shards concatenated in ``order``; index i ≥ N wraps around (lap = i // N)."""

    def __init__(self, sizes: list[int], order: list[int]) -> None:
        self.order = [s for s in order if sizes[s] > 0]
        self.sizes = [sizes[s] for s in self.order]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        self.n = self.offsets[-1]

    def segments(self, a: int, b: int) -> list[Segment]:
        out: list[Segment] = []
        i = a
        while i < b:
            lap, j = divmod(i, self.n)
            s = bisect.bisect_right(self.offsets, j) - 1
            start = j - self.offsets[s]
            take = min(self.sizes[s] - start, b - i)
            out.append(Segment(self.order[s], start, start + take, lap))
            i += take
        return out


def make_plan(shard_sizes: list[int], *, world_size: int, num_workers: int, batch_size: int, epoch: int = 0,
              seed: int = 0, mode: Mode = "exact", shuffle: bool = True, equalize: bool = True,
              remainder: Literal["repeat", "drop"] = "repeat") -> EpochPlan:
    """The plan of one epoch (see the module docstring); ``num_workers=0`` plans as one worker."""
    if world_size < 1 or batch_size < 1:
        raise ValueError("world_size and batch_size must be >= 1")
    if mode not in ("exact", "resampled"):
        raise ValueError(f"unknown mode {mode!r}")
    k = max(1, num_workers)
    w_ = world_size
    n = int(sum(shard_sizes))
    if n == 0:
        raise ValueError("the shards hold no samples")
    order = list(range(len(shard_sizes)))
    if shuffle:
        order = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(len(shard_sizes)).tolist()
    seq = _Sequence(list(shard_sizes), order)
    g = w_ * batch_size
    if mode == "resampled" or equalize:
        steps = math.ceil(n / g) if (remainder == "repeat" or mode == "resampled") else n // g
        if steps == 0:
            raise ValueError(f"{n} samples < one global batch of {g} (remainder='drop')")
        rank_counts = [steps * batch_size] * w_
    else:
        rank_counts = [n // w_ + (r < n % w_) for r in range(w_)]
        steps = math.ceil(max(rank_counts) / batch_size)
    used = sum(rank_counts)
    plan = EpochPlan(mode=mode, epoch=epoch, seed=seed, world_size=w_, num_workers=k, batch_size=batch_size,
                     equalize=equalize or mode == "resampled", num_samples=n, steps=steps,
                     repeated=max(0, used - n) if mode == "exact" else 0,
                     dropped=max(0, n - used) if mode == "exact" else 0, shard_order=seq.order, ranks=[])
    offset = 0
    for r, count in enumerate(rank_counts):
        rp = RankPlan(rank=r, steps=len(_batch_sizes(count, batch_size)), samples=count, repeated=0)
        for wk, (ids, sizes) in enumerate(_split_batches(_batch_sizes(count, batch_size), k)):
            q = sum(sizes)
            if mode == "exact":
                segs = seq.segments(offset, offset + q)
                offset += q
            else:
                segs = _draws(seq, q, np.random.default_rng([seed, epoch, r, wk, 0xD1CE]))
            wp = WorkerPlan(rank=r, worker=wk, batch_ids=ids, batch_sizes=sizes, segments=segs,
                            repeated=sum(s.samples for s in segs if s.lap > 0) if mode == "exact" else 0)
            rp.repeated += wp.repeated
            rp.workers.append(wp)
        plan.ranks.append(rp)
    return plan


def _draws(seq: _Sequence, quota: int, rng: np.random.Generator) -> list[Segment]:
    """Whole shards drawn with replacement until ``quota`` samples (the last one cut short)."""
    segs: list[Segment] = []
    drawn: dict[int, int] = {}
    while quota > 0:
        s = int(rng.integers(len(seq.order)))
        take = min(seq.sizes[s], quota)
        shard = seq.order[s]
        segs.append(Segment(shard, 0, take, drawn.get(shard, 0)))
        drawn[shard] = drawn.get(shard, 0) + 1
        quota -= take
    return segs


def shuffle_order(n: int, buffer: int, rng: np.random.Generator) -> list[int]:
    """The output order of a shuffle buffer of size ``buffer`` over inputs ``0..n-1``: fill the buffer, then each
    new input replaces a uniformly chosen buffered one, which is emitted; finally the rest in random order."""
    if buffer <= 1 or n <= 1:
        return list(range(n))
    size = min(buffer, n)
    picks = rng.integers(0, size, n - size).tolist()
    buf = list(range(size))
    out: list[int] = []
    for q, i in zip(range(size, n), picks, strict=True):
        out.append(buf[i])
        buf[i] = q
    out.extend(rng.permutation(buf).tolist())
    return out
