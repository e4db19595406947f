"""The plan is defined by the global batch: `bigbatch shards plan --json` lists the same global batches for every
world size that divides the lanes, and the streams of all ranks, concatenated in rank order, read exactly them —
also resumed mid-epoch, with any number of loader workers."""

from __future__ import annotations

import json

import pytest

from data_pipeline.manifest import load_manifest
from data_pipeline.stream import StreamSpec, make_loader

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")

GLOBAL, LANES = 48, 6


def plan_json(capsys, src: str, world: int, *extra: str) -> dict:
    from cluster.cli import main

    assert main(["shards", "plan", src, "--world-size", str(world), "--batch-size", str(GLOBAL), "--lanes",
                 str(LANES), "--epoch", "1", "--seed", "3", "--shuffle-buffer", "100", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def stream_batches(src: str, world: int, workers: int, start: int = 0, mode: str = "exact") -> list[list[str]]:
    """Keys of every step from `start` on: all ranks' batches concatenated in rank order."""
    spec = StreamSpec(source=src, batch_size=GLOBAL // world, num_workers=workers, seed=3, shuffle_buffer=100,
                      lanes=LANES, augment=False, num_views=1, mode=mode)
    per_rank = [[b["key"] for b in make_loader(spec, rank=r, world_size=world, epoch=1, start_batch=start)]
                for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1                         # every rank the same number of steps
    assert all(len(k) == GLOBAL // world for b in per_rank for k in b)  # and the same local batch
    return [sum(step, []) for step in zip(*per_rank, strict=True)]


def test_global_batches_do_not_depend_on_the_world_size(small_shards, capsys):
    src = str(small_shards)
    n = load_manifest(src).num_samples
    plans = {w: plan_json(capsys, src, w) for w in (1, 2, 3)}
    batches = plans[1]["global_batches"]
    assert len(batches) == plans[1]["steps"] == -(-n // GLOBAL) and all(len(b) == GLOBAL for b in batches)
    for w in (2, 3):
        assert plans[w]["global_batches"] == batches, w
        assert [len(r["workers"][0]["lanes"]) for r in plans[w]["ranks"]] == [LANES // w] * w
    keys = [k for b in batches for k in b]
    assert set(keys) == {k for s in load_manifest(src).shards for k in s.keys}   # every sample, repeats counted
    assert len(keys) - n == plans[1]["repeated"] > 0
    # the order is shuffled within lanes: not the shards' order, and another epoch is another order
    assert batches[0] != sorted(batches[0])
    from cluster.cli import main

    main(["shards", "plan", src, "--batch-size", str(GLOBAL), "--lanes", str(LANES), "--epoch", "2", "--json"])
    other = json.loads(capsys.readouterr().out)
    assert other["global_batches"] != batches


@pytest.mark.parametrize(("world", "workers", "start"), [(1, 0, 0), (2, 2, 0), (3, 1, 0), (1, 3, 2), (3, 2, 4)])
def test_streams_read_the_plans_global_batches(small_shards, capsys, world, workers, start):
    src = str(small_shards)
    plan = plan_json(capsys, src, world, "--workers", str(workers))
    assert stream_batches(src, world, workers, start) == plan["global_batches"][start:]


def test_resampled_lanes_do_not_depend_on_the_world_size(small_shards):
    src = str(small_shards)
    one = stream_batches(src, 1, 0, mode="resampled")
    assert stream_batches(src, 3, 2, mode="resampled") == one
    assert stream_batches(src, 2, 1, start=3, mode="resampled") == one[3:]


def test_a_world_size_that_does_not_divide_the_lanes_is_one_line(small_shards, capsys):
    from cluster.cli import main

    assert main(["shards", "plan", str(small_shards), "--world-size", "4", "--batch-size", "48", "--lanes", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("bigbatch shards plan: --world-size 4: world size 4 does not divide the 6 lanes and the global "
                   "batch 48: the supported world sizes are 1, 2, 3, 6 (the lanes fix the epoch's order; choose lanes "
                   "divisible by every world size the run may have)")
