"""`bigbatch shards plan` prints the plan the stream runs; `bigbatch bench data` measures all three pipelines."""

from __future__ import annotations

import json

import pytest

from data_pipeline.manifest import load_manifest

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def test_shards_plan_json_is_the_streams_plan(digits_shards, capsys):
    from cluster.cli import main
    from data_pipeline.stream import StreamSpec, make_loader

    src = str(digits_shards["train"])
    assert main(["shards", "plan", src, "--world-size", "3", "--workers", "2", "--batch-size", "40",
                 "--epoch", "2", "--seed", "7", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    n = load_manifest(src).num_samples
    assert plan["steps"] == -(-n // 120) and plan["repeated"] == plan["steps"] * 120 - n
    spec = StreamSpec(source=src, batch_size=40, num_workers=2, seed=7, augment=False)
    for r in range(3):
        loader = make_loader(spec, rank=r, world_size=3, epoch=2)
        assert len(loader) == plan["ranks"][r]["steps"]
        got = sorted(k for b in loader for k in b["key"])
        m = load_manifest(src)
        want = sorted(k for w in plan["ranks"][r]["workers"] for s in w["segments"]
                      for k in m.shards[s["shard"]].keys[s["start"]:s["stop"]])
        assert got == want
    assert main(["shards", "plan", src, "--world-size", "2", "--workers", "1"]) == 0
    assert "steps per rank" in capsys.readouterr().out


def test_bench_data_measures_three_pipelines(cifar_shards, capsys):
    from cluster.cli import main

    assert main(["bench", "data", str(cifar_shards), "--seconds", "0.3", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert "torchvision ImageFolder + PIL" in "\n".join(out)
    for key in ("stream_pairs_per_s_per_core", "torchvision_pairs_per_s_per_core", "decode_images_per_s_per_core"):
        assert result[key] > 0
    assert result["stream_over_torchvision"] == pytest.approx(
        result["stream_pairs_per_s_per_core"] / result["torchvision_pairs_per_s_per_core"], rel=0.02)
