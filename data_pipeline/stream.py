"""The training stream: shards → epoch plan (lanes) → seeded shuffle buffer per lane → decode → views → batches.

    spec = StreamSpec(source="shards/", batch_size=256)   # per rank; the global batch is batch_size × W
    loader = make_loader(spec, rank=r, world_size=W, epoch=e, start_batch=b)
    len(loader)          # batches this loader yields: plan.steps − b, the same on every rank
    for batch in loader: # {"views": uint8 [V·n,3,S,S], "label": int64 [n], "key": [str], "index": int}
                         # (+ "local_views": uint8 [L·n,3,s,s] with spec.local_views = L > 0)
    loader.stats         # {"bad": {kind: n}, "repeated", "dropped", "seen", "batches", "bad_examples"}

Every worker executes its part of :func:`data_pipeline.plan.make_plan` (the same function `bigbatch shards
plan` prints): for each of its lanes, the samples pass a shuffle buffer whose output order is precomputed from
(seed, epoch, lane) (:func:`data_pipeline.plan.lane_order`), so resuming at step s reads past each lane's first
s·b_l outputs without decoding them and yields exactly the batches the uninterrupted stream would — for any world
size that divides the lanes. A worker yields its lanes' part of each step; the loader concatenates the parts of a
step in lane order (the probe pass: whole batches round-robin). A bad sample (see badinput.py) is replaced in its
part by a good one of the same part (counted as repeated; keeps every rank's batch count and size), or, in the
non-equalized probe pass, left out. Workers send per-part stats deltas with each part; the loader sums them.
A batch's views are one view-major tensor (rows v·n … v·n+n−1: view v of the n images, see views.make_views);
multi-crop's L local views of each image are a second one, drawn from the same per-sample seed after the V global
views, so both are a function of the sample alone.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.badinput import BadInputCounter, BadInputError, empty_stats, merge_stats
from data_pipeline.decode import UndecodableImage, decode, decode_reduced, image_member, image_size
from data_pipeline.errors import UserInputError
from data_pipeline.manifest import (
    UNLABELLED,
    Manifest,
    ManifestMismatch,
    check_sizes,
    load_source,
    mismatch_message,
    sample_label,
)
from data_pipeline.plan import DEFAULT_LANES, EpochPlan, Lane, Segment, WorkerPlan, lane_order, make_plan
from data_pipeline.tario import TruncatedShard, UnreadableShard, iter_grouped
from data_pipeline.views import (
    ViewParams,
    ViewRecipe,
    center_view,
    draw_params,
    make_views,
    sample_seed,
    stack_params,
)

VIEW_KEYS = ("views", "local_views")  # the batch's image tensors (view-major, uint8)


@dataclass
class StreamSpec:
    source: Any                     # dir/URL with manifest.json, manifest URL, brace pattern, list of URLs, Manifest,
                                    # or "digits" / "digits-holdout" (the built-in default)
    batch_size: int                 # per rank: the plan's global batch is batch_size × world_size
    num_views: int = 2              # global views per image
    augment: bool = True
    image_size: int = 32
    blur: bool | None = None        # None: on above 32 px
    global_scale: tuple[float, float] = (0.08, 1.0)   # crop area range of the global views
    color_strength: float = 1.0     # colour jitter strength s of every view (ViewRecipe.strength)
    local_views: int = 0            # multi-crop: local views per image (augment only)
    local_size: int = 16
    local_scale: tuple[float, float] = (0.05, 0.14)
    mode: Literal["exact", "resampled"] = "exact"
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 2000
    num_workers: int = 1
    max_bad_fraction: float = 0.01
    equalize: bool = True
    remainder: Literal["repeat", "drop"] = "repeat"
    pin_memory: bool = False        # page-locked batches: for a CUDA target only (pinning creates a CUDA context)
    lanes: int = DEFAULT_LANES      # reading lanes that fix the epoch's order (the world size must divide them)

    @property
    def recipe(self) -> ViewRecipe:
        return ViewRecipe(size=self.image_size, scale=self.global_scale, blur=self.blur, strength=self.color_strength)

    @property
    def local_recipe(self) -> ViewRecipe:
        return ViewRecipe(size=self.local_size, scale=self.local_scale, blur=self.blur, strength=self.color_strength)


def plan_for(spec: StreamSpec, manifest: Manifest, world_size: int, epoch: int) -> EpochPlan:
    """The epoch's plan for ``world_size`` ranks of ``spec.batch_size`` rows each (global batch: their product)."""
    return make_plan([s.samples for s in manifest.shards], world_size=world_size, num_workers=spec.num_workers,
                     batch_size=spec.batch_size * world_size, epoch=epoch, seed=spec.seed, mode=spec.mode,
                     shuffle=spec.shuffle, equalize=spec.equalize, remainder=spec.remainder, lanes=spec.lanes,
                     shuffle_buffer=spec.shuffle_buffer)


@dataclass
class _Raw:
    shard: str
    key: str
    label: int
    lap: int
    ext: str = ""
    data: bytes | None = None
    bad: str = ""                  # bad-input kind, if any
    detail: str = ""


class WorkerStream:
    """One worker's part of the plan: from ``start_batch`` on, for each batch its lanes serve, a batch dict of their
    contributions in lane order."""

    def __init__(self, spec: StreamSpec, manifest: Manifest, plan: EpochPlan, wp: WorkerPlan, start_batch: int) -> None:
        self.spec, self.manifest, self.plan, self.wp, self.epoch = spec, manifest, plan, wp, plan.epoch
        self.start_batch = start_batch
        self.bad = BadInputCounter(wp.samples, spec.max_bad_fraction)

    def _read(self, segments: list[Segment], needed: np.ndarray) -> Iterator[tuple[int, _Raw]]:
        """The worker's inputs in reading order as (input index, raw sample); only needed ones carry data.
        Positions a shard fails to deliver come back as bad samples of the failure's kind (a shard counted
        without a manifest: its recorded failure for the positions past its readable samples). A shard that
        ends cleanly before, or holds more than, the samples its manifest lists raises ManifestMismatch."""
        q = 0
        for seg in segments:
            url = self.manifest.url(seg.shard)
            info = self.manifest.shards[seg.shard]
            base = q
            q += seg.samples
            want = needed[base: base + seg.samples]
            if not want.any():
                continue
            stop = min(seg.stop, len(info.keys)) if info.failure else seg.stop
            check_end = not info.failure and seg.stop == info.samples  # this reader meets the shard's end
            got = seg.start
            failure, detail = "", ""
            try:
                def wanted(p: int, a: int = seg.start, b: int = stop, w: np.ndarray = want) -> bool:
                    return a <= p < b and bool(w[p - a])

                shard = iter_grouped(url, want=wanted, expect_bytes=info.bytes) if seg.start < stop else ()
                for pos, key, files in shard:
                    if pos < seg.start:
                        continue
                    if pos >= stop:
                        if check_end:
                            raise ManifestMismatch(mismatch_message(
                                url, f"more samples than the {info.samples} manifest.json lists"))
                        break
                    got = pos + 1
                    label = sample_label(files, info, pos)
                    raw = _Raw(info.name, key, label, seg.lap)
                    if want[pos - seg.start]:
                        member = image_member(files)
                        if member is None:
                            raw.bad = "missing_image"
                        else:
                            raw.ext, raw.data = member
                    yield base + pos - seg.start, raw
                    if got >= stop and not check_end:
                        break
            except UnreadableShard as exc:
                failure, detail = "unreadable_shard", str(exc)
            except TruncatedShard as exc:
                failure, detail = "truncated_tar", str(exc)
            if got < stop and not failure:
                if not info.failure:
                    raise ManifestMismatch(mismatch_message(url, f"{got} samples, but manifest.json lists {info.samples}"))
                failure, detail = "truncated_tar", f"{got} of {len(info.keys)} counted samples"
            if got < seg.stop and not failure:
                failure, detail = info.failure_kind, info.failure.split(": ", 1)[-1]
            for pos in range(got, seg.stop):
                key = info.keys[pos] if pos < len(info.keys) else f"#{pos}"
                yield base + pos - seg.start, _Raw(info.name, key, UNLABELLED, seg.lap, bad=failure, detail=detail)

    def _lane_outputs(self, lane: Lane) -> Iterator[_Raw]:
        """The lane's raw samples in its shuffle order, from its first output of ``start_batch`` on; the skipped
        ones are never decoded (nor read, where the shard reader can seek past them)."""
        order = lane_order(self.plan, lane)
        skip = sum(size for i, size in zip(lane.batch_ids, lane.batch_sizes, strict=True) if i < self.start_batch)
        needed = np.zeros(len(order), dtype=bool)
        needed[order[skip:]] = True
        reader = self._read(lane.segments, needed)
        pending: dict[int, _Raw] = {}
        for q in order[skip:]:
            while q not in pending:
                idx, raw = next(reader)
                if needed[idx]:
                    pending[idx] = raw
            yield pending.pop(q)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        lanes = [(lane, dict(zip(lane.batch_ids, lane.batch_sizes, strict=True)), self._lane_outputs(lane))
                 for lane in self.wp.lanes]
        in_process = get_worker_info() is None
        for b in (i for i in self.wp.batch_ids if i >= self.start_batch):
            raws = [next(out) for _, sizes, out in lanes for _ in range(sizes.get(b, 0))]
            if in_process:  # one thread for the many small ops here; the caller's setting is restored
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    batch = self._batch(b, raws)
                finally:
                    torch.set_num_threads(threads)
            else:
                batch = self._batch(b, raws)
            yield batch

    def _batch(self, index: int, raws: list[_Raw]) -> dict[str, Any]:
        spec = self.spec
        delta = empty_stats()
        images: list[torch.Tensor | None] = []
        sizes: list[tuple[int, int]] = []
        drawn: list[tuple[ViewParams, ViewParams | None] | None] = []  # reduced decodes: the params they drew
        large = spec.augment and spec.image_size > 64
        for raw in raws:
            img, params = None, None
            if not raw.bad:
                try:
                    if large and raw.ext in ("jpg", "jpeg"):
                        img, hw, params = self._decode_reduced(raw)
                    else:
                        img = decode(raw.data)
                        hw = (img.shape[1], img.shape[2])
                except UndecodableImage as exc:
                    raw.bad, raw.detail = "undecodable_image", str(exc)
            if raw.bad:
                self._count_bad(delta, raw)
                images.append(None)
                sizes.append((0, 0))
            else:
                images.append(img)
                sizes.append(hw)
            drawn.append(params)
        good = [i for i, im in enumerate(images) if im is not None]
        keep = list(range(len(raws)))
        if len(good) < len(raws):
            if not spec.equalize and spec.mode == "exact":
                keep = good
            else:
                pool = [(raws[j], images[j], sizes[j]) for j in good] or self._fallback()
                subs = 0
                for i in range(len(raws)):
                    if images[i] is None:
                        raw, images[i], sizes[i] = pool[subs % len(pool)]
                        subs += 1
                        raws[i] = copy.copy(raw)
                        raws[i].lap = raw.lap + 1000 * subs  # a new seed: its views are drawn below
                delta["repeated"] += subs
        raws = [raws[i] for i in keep]
        imgs = [images[i] for i in keep]
        hws = np.array([sizes[i] for i in keep], dtype=np.int64).reshape(-1, 2)
        delta["seen"] = len(raws)
        delta["batches"] = 1
        out = {"label": torch.tensor([r.label for r in raws], dtype=torch.long), "key": [r.key for r in raws],
               "index": index, "stats": delta}
        if not spec.augment:
            v = center_view(imgs, spec.image_size)
            out["views"] = v if spec.num_views == 1 else v.repeat(spec.num_views, 1, 1, 1)
            return out
        seeds = np.array([sample_seed(spec.seed, self.epoch, r.key, r.lap) for r in raws], dtype=np.uint64)
        scale, params, local = None, None, None
        if any(d is not None for d in drawn):  # reduced decodes: crop boxes map onto the reduced images
            scale = [(im.shape[1] / hw[0], im.shape[2] / hw[1]) for im, hw in zip(imgs, hws.tolist(), strict=True)]
            ok = set(good)
            rows = [drawn[i] if i in ok else None for i in keep]  # substitutes draw with their new seed
            rows = [r if r is not None else self._draw(seeds[j:j + 1], hws[j:j + 1]) for j, r in enumerate(rows)]
            params = stack_params([r[0] for r in rows], spec.num_views)
            if spec.local_views:
                local = stack_params([r[1] for r in rows], spec.local_views)
        out["views"] = make_views(imgs, seeds, spec.recipe, spec.num_views, sizes=hws, scale=scale, params=params)
        if spec.local_views:
            out["local_views"] = make_views(imgs, seeds, spec.local_recipe, spec.local_views, sizes=hws, scale=scale,
                                            params=local, first_view=spec.num_views)
        return out

    def _fallback(self, want: int = 16) -> list[tuple[_Raw, torch.Tensor, tuple[int, int]]]:
        """Substitutes for a batch with no good sample: the first ``want`` decodable samples of the dataset in
        manifest order (the same whatever the resume point, so resumed streams stay equal)."""
        if getattr(self, "_pool", None) is None:
            self._pool = []
            for i, info in enumerate(self.manifest.shards):
                try:
                    for pos, key, files in iter_grouped(self.manifest.url(i)):
                        member = image_member(files)
                        if member is None:
                            continue
                        try:
                            img = decode(member[1])
                        except UndecodableImage:
                            continue
                        label = sample_label(files, info, pos)
                        self._pool.append((_Raw(info.name, key, label, 0, member[0], member[1]), img,
                                           (img.shape[1], img.shape[2])))
                        if len(self._pool) >= want:
                            return self._pool
                except (UnreadableShard, TruncatedShard):
                    continue
            if not self._pool:
                raise BadInputError("no decodable sample in the whole dataset")
        return self._pool

    def _draw(self, seed: np.ndarray, hw: np.ndarray) -> tuple[ViewParams, ViewParams | None]:
        """One sample's global and local view parameters (``seed`` ``[1]``, ``hw`` its original ``[[H, W]]``)."""
        spec = self.spec
        local = draw_params(seed, hw, spec.local_recipe, spec.local_views, spec.num_views) if spec.local_views else None
        return draw_params(seed, hw, spec.recipe, spec.num_views), local

    def _decode_reduced(self, raw: _Raw) -> tuple[torch.Tensor, tuple[int, int], tuple[ViewParams, ViewParams | None]]:
        """Decode at the largest JPEG reduction that keeps every view's crop at ≥ its output size; returns the
        image, its original (H, W) and the view parameters drawn to choose the reduction (make_views uses them)."""
        h, w = image_size(raw.data)
        seed = np.array([sample_seed(self.spec.seed, self.epoch, raw.key, raw.lap)], dtype=np.uint64)
        params = self._draw(seed, np.array([[h, w]]))
        shrink = float(np.minimum(params[0].height, params[0].width).min()) / self.spec.image_size
        if params[1] is not None:
            shrink = min(shrink, float(np.minimum(params[1].height, params[1].width).min()) / self.spec.local_size)
        reduce = 8 if shrink >= 8 else 4 if shrink >= 4 else 2 if shrink >= 2 else 1
        return decode_reduced(raw.data, reduce), (h, w), params

    def _count_bad(self, delta: dict[str, Any], raw: _Raw) -> None:
        delta["bad"][raw.bad] += 1
        if len(delta["bad_examples"]) < 5:
            delta["bad_examples"].append(f"{raw.bad}: {raw.shard}/{raw.key}" + (f" ({raw.detail})" if raw.detail else ""))
        self.bad.add(raw.bad, raw.shard, raw.key, detail=raw.detail)


class _PlanDataset(IterableDataset):
    def __init__(self, spec: StreamSpec, manifest: Manifest, plan: EpochPlan, rank: int, start_batch: int) -> None:
        super().__init__()
        self.spec, self.manifest, self.plan, self.rank, self.start_batch = spec, manifest, plan, rank, start_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = self.plan.ranks[self.rank].workers
        k = len(workers)
        if info is None and k > 1:
            raise RuntimeError("a multi-worker plan iterated in-process")
        worker = info.id if info is not None else 0
        if self.plan.round_robin:
            # the DataLoader polls its workers round-robin from id 0: id j serves the plan worker whose next batch
            # is start_batch + j, so a resumed stream keeps the rank's batch order
            worker = (worker + self.start_batch) % k
        try:
            yield from WorkerStream(self.spec, self.manifest, self.plan, workers[worker], self.start_batch)
        except UserInputError as exc:
            if info is None:
                raise
            yield {"error": exc}  # re-raised by ShardLoader with its message intact (not wrapped by the DataLoader)


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch from the parts of a step, in the given (lane) order; each view stays its own block of rows."""
    if len(parts) == 1:
        return parts[0]
    out = {**parts[0], "label": torch.cat([p["label"] for p in parts]), "key": [k for p in parts for k in p["key"]]}
    n = sum(len(p["key"]) for p in parts)
    for name in VIEW_KEYS:
        if name in parts[0]:  # view-major [V·n_p, …] per part → view-major [V·Σn_p, …]
            v = sum(p[name].shape[0] for p in parts) // max(1, n)
            out[name] = torch.cat([p[name].unflatten(0, (v, -1)) for p in parts], dim=1).flatten(0, 1)
    return out


class ShardLoader:
    """Iterable of this rank's batches for one epoch (see the module docstring)."""

    def __init__(self, spec: StreamSpec, rank: int = 0, world_size: int = 1, epoch: int = 0, start_batch: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.spec, self.rank, self.world_size, self.epoch = spec, rank, world_size, epoch
        self.manifest = load_source(spec.source)
        check_sizes(self.manifest)
        self.plan = plan_for(spec, self.manifest, world_size, epoch)
        self.rank_plan = self.plan.ranks[rank]
        self.steps_per_epoch = self.rank_plan.steps
        self.start_batch = min(max(0, start_batch), self.steps_per_epoch)
        self.stats = empty_stats()
        self.stats["repeated"] = self.rank_plan.repeated  # planned repeats; bad-sample substitutes add to it
        self.stats["dropped"] = self.plan.dropped if rank == 0 else 0
        self.position = self.start_batch

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_batch

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    def state(self) -> dict[str, int]:
        """The position to resume from: ``make_loader(..., epoch=state['epoch'], start_batch=state['batch'])``."""
        return {"epoch": self.epoch, "batch": self.position}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        k = len(self.rank_plan.workers) if self.spec.num_workers > 0 else 0
        parts = 1 if self.plan.round_robin else max(1, k)  # items per step: one part from each worker, in turn
        ds = _PlanDataset(self.spec, self.manifest, self.plan, self.rank, self.start_batch)
        if k > 0:
            loader = DataLoader(ds, batch_size=None, num_workers=k, persistent_workers=False,
                                pin_memory=self.spec.pin_memory and parts == 1, prefetch_factor=2,
                                multiprocessing_context=_mp_context())
        else:
            loader = ds
        expected = self.start_batch
        step: list[dict[str, Any]] = []
        for item in loader:
            if "error" in item:
                raise item["error"]
            merge_stats(self.stats, item.pop("stats"))
            if item["index"] != expected:
                raise RuntimeError(f"stream out of order: got batch {item['index']}, expected {expected}")
            step.append(item)
            if len(step) < parts:
                continue
            batch, step = _concat(step), []
            if self.spec.pin_memory and parts > 1:
                batch = _pinned(batch)
            expected += 1
            self.position = expected
            yield batch


def _pinned(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, **{k: batch[k].pin_memory() for k in VIEW_KEYS if k in batch}, "label": batch["label"].pin_memory()}


def _mp_context():
    import multiprocessing as mp

    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None


def make_loader(spec: StreamSpec, rank: int = 0, world_size: int = 1, epoch: int = 0, start_batch: int = 0) -> ShardLoader:
    """This rank's stream for ``epoch`` from batch ``start_batch`` on."""
    return ShardLoader(spec, rank=rank, world_size=world_size, epoch=epoch, start_batch=start_batch)
