"""Bad input: a corrupt image, a sample without its image, a truncated tar, an empty shard and an unreachable URL are
skipped and counted by kind (also from DataLoader worker processes); every rank still gets its steps; past
max_bad_fraction the stream stops with an error naming the shard and the sample; `shards inspect` reports them."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from webdataset import TarWriter

from data_pipeline.audit import inspect_shards
from data_pipeline.badinput import BadInputError
from data_pipeline.manifest import load_manifest
from data_pipeline.stream import StreamSpec, make_loader
from data_pipeline.tario import iter_members_grouped

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connections are refused


def rewrite(path: Path, edit) -> None:
    """Rewrite a shard with ``edit(index, key, files) -> files | None`` (webdataset's TarWriter)."""
    samples = list(iter_members_grouped(str(path)))
    with TarWriter(str(path), encoder=False, mtime=0) as sink:
        for i, (key, files) in enumerate(samples):
            files = edit(i, key, dict(files))
            if files is not None:
                sink.write({"__key__": key, **files})


@pytest.fixture(scope="module")
def broken(tmp_path_factory, cifar_shards) -> dict:
    """The CIFAR shards (5 shards: 64,64,64,64,44) with one bad input of each kind."""
    d = tmp_path_factory.mktemp("broken") / "shards"
    shutil.copytree(cifar_shards, d)
    m = load_manifest(d)
    names = [s.name for s in m.shards]
    corrupt_key, missing_key = m.shards[0].keys[5], m.shards[1].keys[7]
    rewrite(d / names[0], lambda i, k, f: {**f, "jpg": b"\xff\xd8 not a jpeg"} if k == corrupt_key else f)
    rewrite(d / names[1], lambda i, k, f: {"cls": f["cls"]} if k == missing_key else f)
    raw = (d / names[2]).read_bytes()
    (d / names[2]).write_bytes(raw[: len(raw) // 2 + 100])                # cut mid-sample
    complete = 0
    try:
        for _ in iter_members_grouped(str(d / names[2])):
            complete += 1
    except OSError:
        pass
    (d / names[3]).write_bytes(b"")                                        # empty shard
    url = f"http://127.0.0.1:{closed_port()}/{names[4]}"
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["shards"][4]["name"] = url                                    # unreachable URL
    (d / "manifest.json").write_text(json.dumps(manifest))
    expected = {"undecodable_image": 1, "missing_image": 1, "truncated_tar": 64 - complete, "empty_shard": 64,
                "unreadable_shard": 44}
    return {"dir": d, "expected": expected, "corrupt": (names[0], corrupt_key), "missing": (names[1], missing_key),
            "url": url}


def test_each_kind_is_skipped_and_counted_from_worker_processes(broken):
    spec = StreamSpec(source=str(broken["dir"]), batch_size=15, num_workers=2, max_bad_fraction=1.0,
                      augment=True, shuffle_buffer=50)  # 2 × 15 divides 300: no planned repeats
    bad_total, steps = {}, set()
    keys = []
    for rank in range(2):
        loader = make_loader(spec, rank=rank, world_size=2)
        batches = list(loader)
        steps.add((len(loader), len(batches)))
        assert all(len(b["key"]) == 15 and b["views"][0].shape[0] == 15 for b in batches)
        for kind, n in loader.stats["bad"].items():
            bad_total[kind] = bad_total.get(kind, 0) + n
        keys += [k for b in batches for k in b["key"]]
        if any(loader.stats["bad"].values()):
            assert loader.stats["bad_examples"]
    assert steps == {(10, 10)}                                            # 300 / 30 on both ranks
    assert bad_total == broken["expected"]
    assert broken["corrupt"][1] not in keys and broken["missing"][1] not in keys


def test_probe_pass_leaves_bad_samples_out(broken):
    spec = StreamSpec(source=str(broken["dir"]), batch_size=50, num_workers=0, max_bad_fraction=1.0, augment=False,
                      num_views=1, shuffle=False, equalize=False)
    loader = make_loader(spec)
    n = sum(len(b["key"]) for b in loader)
    assert n == 300 - sum(broken["expected"].values())
    assert loader.stats["seen"] == n


def test_past_max_bad_fraction_the_error_names_shard_and_sample(broken):
    spec = StreamSpec(source=str(broken["dir"]), batch_size=16, num_workers=0, max_bad_fraction=0.0,
                      shuffle=False, augment=False)
    with pytest.raises(BadInputError, match=rf"{broken['corrupt'][0]}.*{broken['corrupt'][1]}"):
        list(make_loader(spec))


def test_error_crosses_the_worker_process_boundary(broken):
    spec = StreamSpec(source=str(broken["dir"]), batch_size=16, num_workers=2, max_bad_fraction=0.05, shuffle=False)
    with pytest.raises(Exception, match="max_bad_fraction"):
        for _ in make_loader(spec):
            pass


def test_inspect_reports_every_kind(broken, capsys):
    from cluster.cli import main

    report = inspect_shards(broken["dir"])
    assert {k: v for k, v in report["bad"].items() if v} == broken["expected"]
    assert report["samples_good"] == 300 - sum(broken["expected"].values())
    assert any(broken["url"] in e for e in report["bad_examples"])
    assert main(["shards", "inspect", str(broken["dir"])]) == 1
    out = capsys.readouterr().out
    assert "unreadable_shard" in out and "truncated_tar" in out
