"""The epoch plan: which samples make global batch s, and which (rank, DataLoader worker) reads them.
``bigbatch shards plan`` prints it and the stream executes it (one code path).

Lanes (training, ``equalize``): a fixed number K of reading lanes defines the epoch whatever the world size W and
the loader workers. The shard sequence (shards ordered by a permutation seeded by (seed, epoch)) of N samples is
padded by repeats of its start to ``S·B`` samples (``S = ceil(N / B)`` steps of the GLOBAL batch B;
``remainder="drop"``: ``S = floor``, the tail is dropped) and cut into K contiguous lane ranges; lane l gives
``b_l = floor((l+1)·B/K) − floor(l·B/K)`` samples per step from its own shuffle buffer, whose order is keyed by
(seed, epoch, l). Global batch s is the concatenation over l = 0..K−1 of lane l's outputs
``[s·b_l, (s+1)·b_l)``. Rank r of W reads lanes ``[r·K/W, (r+1)·K/W)``: the b_l telescope to ``B/W`` rows
per rank, so W must divide K and B (:func:`supported_world_sizes`); its loader workers read contiguous blocks of
its lanes and each yields its lanes' part of every step (parts concatenated in worker = lane order).
Resampled mode: each lane draws whole shards with replacement from a generator keyed by (seed, epoch, lane).
Probe pass (not ``equalize``): each sample exactly once; rank r reads a contiguous 1/W of the sequence, its
worker w is one lane serving the rank's batches w, w+k, … whole (DataLoader round-robin); the last may be partial.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Mode = Literal["exact", "resampled"]
DEFAULT_LANES = 16


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
class Lane:
    """One reading lane: its segments in reading order, passed through its own shuffle buffer; it contributes
    ``batch_sizes[i]`` consecutive outputs to the rank's batch ``batch_ids[i]``."""

    lane: int
    segments: list[Segment]
    batch_ids: list[int]
    batch_sizes: list[int]
    repeated: int = 0

    @property
    def samples(self) -> int:
        return sum(self.batch_sizes)


@dataclass
class WorkerPlan:
    rank: int
    worker: int
    lanes: list[Lane]

    @property
    def samples(self) -> int:
        return sum(lane.samples for lane in self.lanes)

    @property
    def segments(self) -> list[Segment]:
        return [s for lane in self.lanes for s in lane.segments]

    @property
    def batch_ids(self) -> list[int]:
        return sorted({i for lane in self.lanes for i in lane.batch_ids})


@dataclass
class RankPlan:
    rank: int
    steps: int
    samples: int
    repeated: int
    batch_size: int            # this rank's rows of a full global batch
    workers: list[WorkerPlan] = field(default_factory=list)


@dataclass
class EpochPlan:
    mode: str
    epoch: int
    seed: int
    lanes: int                 # K (0: the probe pass's one lane per (rank, worker))
    world_size: int
    num_workers: int
    batch_size: int            # global
    equalize: bool
    shuffle: bool
    shuffle_buffer: int
    num_samples: int           # in the dataset
    steps: int                 # per rank (the largest, when not equalized)
    repeated: int
    dropped: int
    shard_order: list[int]
    ranks: list[RankPlan]

    @property
    def round_robin(self) -> bool:
        """True: each rank batch comes whole from one worker; False: every worker yields a part of every step."""
        return not self.equalize

    def all_lanes(self) -> list[Lane]:
        return sorted((lane for r in self.ranks for w in r.workers for lane in w.lanes), key=lambda x: x.lane)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def supported_world_sizes(lanes: int, batch_size: int) -> list[int]:
    """The world sizes W that read the same global batches: W divides the lanes K and the global batch B."""
    return [w for w in range(1, lanes + 1) if lanes % w == 0 and batch_size % w == 0]


def check_world_size(world_size: int, lanes: int, batch_size: int) -> None:
    """ValueError naming the supported world sizes unless ``world_size`` divides ``lanes`` and ``batch_size``."""
    if lanes % world_size or batch_size % world_size:
        raise ValueError(f"world size {world_size} does not divide the {lanes} lanes and the global batch "
                         f"{batch_size}: the supported world sizes are "
                         f"{', '.join(map(str, supported_world_sizes(lanes, batch_size)))} (the lanes fix the "
                         "epoch's order; choose lanes divisible by every world size the run may have)")


def lane_share(lane: int, lanes: int, batch_size: int) -> int:
    """b_l = floor((l+1)·B/K) − floor(l·B/K): lane l's rows of every global batch (they sum to B over the lanes)."""
    return (lane + 1) * batch_size // lanes - lane * batch_size // lanes


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size:
        sizes.append(n % batch_size)
    return sizes


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


def _blocks(items: list, k: int) -> list[list]:
    """``items`` cut into min(k, len) contiguous blocks whose sizes differ by at most one."""
    k = max(1, min(k, len(items)))
    return [items[len(items) * j // k: len(items) * (j + 1) // k] for j in range(k)]


def make_plan(shard_sizes: list[int], *, world_size: int, num_workers: int, batch_size: int, epoch: int = 0,
              seed: int = 0, mode: Mode = "exact", shuffle: bool = True, equalize: bool = True,
              remainder: Literal["repeat", "drop"] = "repeat", lanes: int = DEFAULT_LANES,
              shuffle_buffer: int = 0) -> EpochPlan:
    """The plan of one epoch (see the module docstring); ``batch_size`` is the global batch; ``num_workers=0``
    plans as one worker."""
    if world_size < 1 or batch_size < 1 or lanes < 1:
        raise ValueError("world_size, batch_size and lanes must be >= 1")
    if mode not in ("exact", "resampled"):
        raise ValueError(f"unknown mode {mode!r}")
    k = max(1, num_workers)
    n = int(sum(shard_sizes))
    if n == 0:
        raise ValueError("the shards hold no samples")
    order = list(range(len(shard_sizes)))
    if shuffle:
        order = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(len(shard_sizes)).tolist()
    seq = _Sequence(list(shard_sizes), order)
    equalize = equalize or mode == "resampled"
    plan = EpochPlan(mode=mode, epoch=epoch, seed=seed, lanes=lanes if equalize else 0, world_size=world_size,
                     num_workers=k, batch_size=batch_size, equalize=equalize, shuffle=shuffle,
                     shuffle_buffer=shuffle_buffer, num_samples=n, steps=0, repeated=0, dropped=0,
                     shard_order=seq.order, ranks=[])
    if equalize:
        _plan_lanes(plan, seq, k, remainder)
    else:
        _plan_probe(plan, seq, k)
    return plan


def _plan_lanes(plan: EpochPlan, seq: _Sequence, k: int, remainder: str) -> None:
    b, n, w_, lanes = plan.batch_size, plan.num_samples, plan.world_size, plan.lanes
    check_world_size(w_, lanes, b)
    steps = math.ceil(n / b) if (remainder == "repeat" or plan.mode == "resampled") else n // b
    if steps == 0:
        raise ValueError(f"{n} samples < one global batch of {b} (remainder='drop')")
    plan.steps = steps
    if plan.mode == "exact":
        plan.repeated, plan.dropped = max(0, steps * b - n), max(0, n - steps * b)
    per_rank = lanes // w_
    for r in range(w_):
        rp = RankPlan(rank=r, steps=steps, samples=steps * b // w_, repeated=0, batch_size=b // w_)
        mine = []
        for lane_id in range(r * per_rank, (r + 1) * per_rank):
            share = lane_share(lane_id, lanes, b)
            if share == 0:  # B < K: this lane contributes nothing
                continue
            start = steps * (lane_id * b // lanes)
            if plan.mode == "exact":
                segs = seq.segments(start, start + steps * share)
                rep = sum(s.samples for s in segs if s.lap > 0)
            else:
                segs = _draws(seq, steps * share, np.random.default_rng([plan.seed, plan.epoch, lane_id, 0xD1CE]))
                rep = 0
            mine.append(Lane(lane_id, segs, list(range(steps)), [share] * steps, rep))
            rp.repeated += rep
        rp.workers = [WorkerPlan(r, j, block) for j, block in enumerate(_blocks(mine, k))]
        plan.ranks.append(rp)


def _plan_probe(plan: EpochPlan, seq: _Sequence, k: int) -> None:
    """Each sample once: contiguous per-rank ranges, the rank's batches (of B/W, the last partial) round-robin
    over its workers, each worker one lane."""
    n, w_ = plan.num_samples, plan.world_size
    local = max(1, plan.batch_size // w_)
    counts = [n // w_ + (r < n % w_) for r in range(w_)]
    plan.steps = math.ceil(max(counts) / local)
    offset = 0
    for r, count in enumerate(counts):
        sizes = _batch_sizes(count, local)
        rp = RankPlan(rank=r, steps=len(sizes), samples=count, repeated=0, batch_size=local)
        for j in range(k):
            ids, part = list(range(j, len(sizes), k)), sizes[j::k]
            segs = seq.segments(offset, offset + sum(part))
            offset += sum(part)
            rp.workers.append(WorkerPlan(r, j, [Lane(r * k + j, segs, ids, part)]))
        plan.ranks.append(rp)


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


def lane_order(plan: EpochPlan, lane: Lane) -> list[int]:
    """The lane's output order over its inputs (positions in its segments' concatenation), keyed by
    (seed, epoch, lane) only."""
    n = sum(s.samples for s in lane.segments)
    if not plan.shuffle:
        return list(range(n))
    return shuffle_order(n, plan.shuffle_buffer, np.random.default_rng([plan.seed, plan.epoch, lane.lane, 0x5B0F]))


def global_batches(plan: EpochPlan) -> list[list[tuple[int, int, int]]]:
    """Global step s → its samples as (shard, position, lap), the lanes' contributions in lane order."""
    steps: dict[int, list[tuple[int, int, int]]] = {}
    for lane in plan.all_lanes():
        inputs = [(s.shard, p, s.lap) for s in lane.segments for p in range(s.start, s.stop)]
        out = iter(lane_order(plan, lane))
        for i, size in zip(lane.batch_ids, lane.batch_sizes, strict=True):
            steps.setdefault(i, []).extend(inputs[next(out)] for _ in range(size))
    return [steps[i] for i in sorted(steps)]
