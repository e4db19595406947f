"""The stream executes the plan: same steps on every rank, exact coverage, determinism, per-sample views that do not
depend on the number of ranks or workers, and resume equality."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from data_pipeline.manifest import load_manifest
from data_pipeline.stream import StreamSpec, make_loader, plan_for

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def planned_keys(manifest, plan, rank: int) -> Counter:
    keys: Counter = Counter()
    for w in plan.ranks[rank].workers:
        for s in w.segments:
            keys.update(manifest.shards[s.shard].keys[s.start:s.stop])
    return keys


def per_view(b: dict, name: str = "views") -> torch.Tensor:
    """A batch's view-major ``[V·n, …]`` views as ``[V, n, …]``."""
    return b[name].unflatten(0, (-1, len(b["key"])))


def run(spec: StreamSpec, rank: int = 0, world_size: int = 1, epoch: int = 0, start_batch: int = 0):
    loader = make_loader(spec, rank=rank, world_size=world_size, epoch=epoch, start_batch=start_batch)
    batches = list(loader)
    return loader, batches


@pytest.mark.parametrize(("world", "workers", "batch", "lanes"), [(1, 0, 100, 16), (2, 2, 64, 16), (3, 1, 50, 6),
                                                                  (2, 3, 37, 16)])
def test_plan_equals_stream_and_every_rank_gets_the_same_steps(digits_shards, world, workers, batch, lanes):
    src = str(digits_shards["train"])
    m = load_manifest(src)
    spec = StreamSpec(source=src, batch_size=batch, num_workers=workers, augment=False, shuffle_buffer=300,
                      lanes=lanes)
    plan = plan_for(spec, m, world, epoch=1)
    assert plan.steps == math.ceil(m.num_samples / (world * batch))
    everything: Counter = Counter()
    repeated = 0
    for r in range(world):
        loader, batches = run(spec, r, world, epoch=1)
        assert len(loader) == len(batches) == plan.steps
        assert [b["index"] for b in batches] == list(range(plan.steps))
        assert all(len(b["key"]) == batch and per_view(b).shape == (2, batch, 3, 32, 32) for b in batches)
        keys = Counter(k for b in batches for k in b["key"])
        assert keys == planned_keys(m, plan, r)
        everything += keys
        repeated += loader.stats["repeated"]
        assert loader.stats["seen"] == plan.steps * batch
    # exact mode: every sample at least once; the only extras are the counted repeats
    all_keys = [k for s in m.shards for k in s.keys]
    assert set(everything) == set(all_keys)
    assert sum(everything.values()) - len(all_keys) == plan.repeated == repeated
    assert plan.repeated < world * batch


def test_probe_pass_reads_every_sample_exactly_once(digits_shards):
    src = str(digits_shards["holdout"])
    m = load_manifest(src)
    labels = {k: lab for s in m.shards for k, lab in zip(s.keys, s.labels, strict=True)}
    spec = StreamSpec(source=src, batch_size=64, num_views=1, augment=False, shuffle=False, equalize=False,
                      num_workers=2)
    seen = []
    for r in range(3):
        loader, batches = run(spec, r, 3)
        assert len(loader) == len(batches)
        assert all(len(b["key"]) == 64 for b in batches[:-1]) and 0 < len(batches[-1]["key"]) <= 64
        for b in batches:
            assert per_view(b).shape[0] == 1
            assert b["label"].tolist() == [labels[k] for k in b["key"]]
            seen += b["key"]
    assert sorted(seen) == sorted(labels)


def test_same_seed_same_batches_other_epoch_other_order(small_shards):
    spec = StreamSpec(source=str(small_shards), batch_size=32, num_workers=1)
    _, a = run(spec, epoch=0)
    _, b = run(spec, epoch=0)
    _, c = run(spec, epoch=1)
    assert [x["key"] for x in a] == [x["key"] for x in b]
    assert all(torch.equal(x["views"], y["views"]) for x, y in zip(a, b, strict=True))
    assert [x["key"] for x in a] != [x["key"] for x in c]
    assert Counter(k for x in a for k in x["key"]).keys() == Counter(k for x in c for k in x["key"]).keys()
    # the two views of a sample differ (random crops), and images arrive as uint8
    assert a[0]["views"].dtype == torch.uint8 and not torch.equal(per_view(a[0])[0], per_view(a[0])[1])


def test_resampled_mode_has_the_nominal_epoch_length_and_draws_with_replacement(digits_shards):
    """What only resampling does: within one epoch some samples are never drawn while others come twice (whole
    shards drawn with replacement); exact mode with the same settings reads every sample."""
    src = str(digits_shards["train"])
    m = load_manifest(src)
    n = m.num_samples
    for mode in ("exact", "resampled"):
        spec = StreamSpec(source=src, batch_size=128, mode=mode, num_workers=0, augment=False)
        for epoch in (0, 1):
            counts: Counter = Counter()
            for r in (0, 1):
                loader, batches = run(spec, r, 2, epoch=epoch)
                assert len(batches) == len(loader) == math.ceil(n / 256)
                counts.update(k for b in batches for k in b["key"])
            if mode == "exact":
                assert len(counts) == n and max(counts.values()) == 2
            else:
                assert len(counts) < n and max(counts.values()) >= 2


def test_views_depend_on_sample_not_on_ranks_or_workers(small_shards):
    spec1 = StreamSpec(source=str(small_shards), batch_size=20, num_workers=0, seed=5)
    spec2 = StreamSpec(source=str(small_shards), batch_size=10, num_workers=2, seed=5, lanes=6)

    def views_by_key(spec, world):
        out: dict[str, list] = {}
        counts: Counter = Counter()
        for r in range(world):
            for b in run(spec, r, world, epoch=2)[1]:
                for i, k in enumerate(b["key"]):
                    counts[k] += 1
                    out[k] = [v[i] for v in per_view(b)]
        return {k: v for k, v in out.items() if counts[k] == 1}

    one, many = views_by_key(spec1, 1), views_by_key(spec2, 3)
    common = set(one) & set(many)
    assert len(common) > 250
    for k in common:
        assert torch.equal(one[k][0], many[k][0]) and torch.equal(one[k][1], many[k][1])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_the_same_batches(small_shards, workers):
    spec = StreamSpec(source=str(small_shards), batch_size=16, num_workers=workers, shuffle_buffer=100)
    full_loader, full = run(spec, rank=1, world_size=2, epoch=3)
    for b in (1, 4, len(full) - 1):
        loader, rest = run(spec, rank=1, world_size=2, epoch=3, start_batch=b)
        assert len(loader) == len(full) - b == len(rest)
        for x, y in zip(full[b:], rest, strict=True):
            assert x["key"] == y["key"] and x["index"] == y["index"]
            assert torch.equal(x["label"], y["label"])
            assert torch.equal(x["views"], y["views"])
        assert loader.state() == {"epoch": 3, "batch": len(full)}


def test_resume_does_not_decode_the_skipped_samples(small_shards, monkeypatch):
    import data_pipeline.stream as stream

    calls = []
    real = stream.decode
    monkeypatch.setattr(stream, "decode", lambda data: calls.append(1) or real(data))
    spec = StreamSpec(source=str(small_shards), batch_size=16, num_workers=0)
    loader, rest = run(spec, start_batch=10)
    assert len(rest) == len(loader) == 19 - 10
    assert len(calls) == 9 * 16


def test_drop_remainder_and_shuffle_buffer_order():
    import numpy as np

    from data_pipeline.plan import make_plan, shuffle_order

    plan = make_plan([100, 37, 64], world_size=2, num_workers=3, batch_size=32, remainder="drop")
    assert plan.steps == 201 // 32 and plan.dropped == 201 - plan.steps * 32 and plan.repeated == 0
    taken = [(s.shard, i) for r in plan.ranks for w in r.workers for s in w.segments for i in range(s.start, s.stop)]
    assert len(taken) == len(set(taken)) == plan.steps * 32
    assert all(w.batch_ids == list(range(plan.steps)) for r in plan.ranks for w in r.workers)
    assert [sum(lane.batch_sizes[0] for w in r.workers for lane in w.lanes) for r in plan.ranks] == [16, 16]
    order = shuffle_order(1000, 64, np.random.default_rng(0))
    assert sorted(order) == list(range(1000)) and order != list(range(1000))
    assert all(q < j + 64 for j, q in enumerate(order))                 # never reads more than a buffer ahead
    assert shuffle_order(1000, 64, np.random.default_rng(0)) == order


def test_large_jpegs_reduced_decode_views_are_per_sample(tmp_path, monkeypatch):
    """Photos of 173–597 px at 64 px output: mixed sizes, JPEG draft decoding; views still per sample."""
    import data_pipeline.stream as stream
    from cluster.bench.photos import make_photos
    from data_pipeline.writer import write_shards

    write_shards(str(make_photos(tmp_path / "img", count=24)), tmp_path / "shards", shard_size=8)
    reductions = []
    real = stream.decode_reduced
    monkeypatch.setattr(stream, "decode_reduced", lambda data, r: reductions.append(r) or real(data, r))
    spec = StreamSpec(source=str(tmp_path / "shards"), batch_size=6, num_workers=0, image_size=72)
    one = {k: (per_view(b)[0][i], per_view(b)[1][i]) for b in make_loader(spec) for i, k in enumerate(b["key"])}
    assert max(reductions) >= 2 and len(one) == 24
    spec2 = StreamSpec(source=str(tmp_path / "shards"), batch_size=4, num_workers=0, image_size=72, lanes=6)
    for r in range(2):
        for b in make_loader(spec2, rank=r, world_size=3):
            for i, k in enumerate(b["key"]):
                assert torch.equal(one[k][0], per_view(b)[0][i]) and torch.equal(one[k][1], per_view(b)[1][i])
            assert per_view(b).shape == (2, 4, 3, 72, 72)


def test_local_views_have_their_size_and_count_and_are_per_sample(small_shards):
    """Multi-crop: L local views of local_size px per image, a function of the sample key alone (1 rank in-process
    against 3 ranks with 2 loader workers); the global views are those of the stream without local views."""
    src = str(small_shards)
    spec = StreamSpec(source=src, batch_size=20, num_workers=0, seed=5, local_views=3, local_size=12)
    plain = StreamSpec(source=src, batch_size=20, num_workers=0, seed=5)
    many = StreamSpec(source=src, batch_size=10, num_workers=2, seed=5, lanes=6, local_views=3, local_size=12)

    def by_key(spec, world):
        out: dict[str, tuple] = {}
        for r in range(world):
            for b in run(spec, r, world, epoch=2)[1]:
                if spec.local_views:
                    assert per_view(b, "local_views").shape == (3, len(b["key"]), 3, 12, 12)
                    assert b["local_views"].dtype == torch.uint8
                g = per_view(b)
                lv = per_view(b, "local_views") if spec.local_views else None
                for i, k in enumerate(b["key"]):
                    out[k] = (g[:, i], None if lv is None else lv[:, i])
        return out

    one, three, base = by_key(spec, 1), by_key(many, 3), by_key(plain, 1)
    common = set(one) & set(three)
    assert len(common) > 250
    for k in common:
        assert torch.equal(one[k][0], three[k][0]) and torch.equal(one[k][1], three[k][1])
    assert all(torch.equal(one[k][0], base[k][0]) for k in one)          # the local views come after the global ones
    k = sorted(one)[0]
    local = one[k][1]
    assert not torch.equal(local[0], local[1]) and not torch.equal(local[1], local[2])


def test_large_jpegs_with_local_views(tmp_path):
    """Reduced JPEG decodes choose their reduction for the local views too; local views stay per sample."""
    from cluster.bench.photos import make_photos
    from data_pipeline.writer import write_shards

    write_shards(str(make_photos(tmp_path / "img", count=12)), tmp_path / "shards", shard_size=6)
    spec = StreamSpec(source=str(tmp_path / "shards"), batch_size=6, num_workers=0, image_size=96, local_views=2,
                      local_size=48)
    one = {k: per_view(b, "local_views")[:, i] for b in make_loader(spec) for i, k in enumerate(b["key"])}
    spec2 = StreamSpec(source=str(tmp_path / "shards"), batch_size=4, num_workers=0, image_size=96, local_views=2,
                       local_size=48, lanes=6)
    for b in make_loader(spec2, rank=1, world_size=3):
        assert per_view(b, "local_views").shape == (2, 4, 3, 48, 48)
        for i, k in enumerate(b["key"]):
            assert torch.equal(one[k], per_view(b, "local_views")[:, i])
