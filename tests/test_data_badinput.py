"""Bad input, on shards every clone can write (the built-in digits): a corrupt image, a sample without its image, a
tar broken in the middle, a missing shard file and an unreachable URL are skipped and counted by kind (also from
DataLoader worker processes); bad samples are replaced in their batch and counted as repeated; every rank still
gets its steps; past max_bad_fraction the stream stops with an error naming the shard and the sample; `shards
inspect` reports them. Without manifest.json, unreadable, empty, imageless and truncated tars are counted the
same way (their loss estimated), so the fraction check sees them and `inspect`/`plan` name them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tarfile
from pathlib import Path

import pytest
from webdataset import TarWriter

from data_pipeline.audit import inspect_shards
from data_pipeline.badinput import BadInputError
from data_pipeline.errors import UserInputError
from data_pipeline.manifest import load_manifest, resolve_shards, sha256_file
from data_pipeline.stream import StreamSpec, make_loader
from data_pipeline.tario import iter_members_grouped

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


@pytest.fixture(autouse=True)
def no_retries(monkeypatch):
    """An unreachable URL is retried with backoff by default; these tests count, they do not wait."""
    monkeypatch.setenv("BIGBATCH_IO_RETRIES", "0")


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


def relist(directory: Path, index: int) -> None:
    """Make manifest.json describe shard ``index`` as it now is (a shard written with a bad sample in it)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    path = directory / manifest["shards"][index]["name"]
    manifest["shards"][index].update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (directory / "manifest.json").write_text(json.dumps(manifest))


def break_header(path: Path, sample: int) -> None:
    """Overwrite the tar header of sample ``sample``'s first member in place (same size: a tar broken inside)."""
    with tarfile.open(path) as t:
        offset = t.getmembers()[2 * sample].offset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xa5" * 512)


@pytest.fixture(scope="module")
def broken(tmp_path_factory, small_shards) -> dict:
    """The digits shards (5 shards: 64,64,64,64,44) with manifest.json and one bad input of each kind."""
    d = tmp_path_factory.mktemp("broken") / "shards"
    shutil.copytree(small_shards, d)
    m = load_manifest(d)
    names = [s.name for s in m.shards]
    corrupt_key, missing_key = m.shards[0].keys[5], m.shards[1].keys[7]
    rewrite(d / names[0], lambda i, k, f: {**f, "png": b"\x89PNG not a png"} if k == corrupt_key else f)
    relist(d, 0)
    rewrite(d / names[1], lambda i, k, f: {"cls": f["cls"]} if k == missing_key else f)
    relist(d, 1)
    break_header(d / names[2], 40)      # 39..63 lost: 39's members might go on past the break, so it is not kept
    (d / names[3]).unlink()                                                # a missing shard file
    url = f"http://127.0.0.1:{closed_port()}/{names[4]}"
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["shards"][4]["name"] = url                                    # unreachable URL
    (d / "manifest.json").write_text(json.dumps(manifest))
    expected = {"undecodable_image": 1, "missing_image": 1, "truncated_tar": 25, "unreadable_shard": 64 + 44}
    return {"dir": d, "expected": expected, "corrupt": (names[0], corrupt_key), "missing": (names[1], missing_key),
            "url": url, "truncated": (names[2], m.shards[2].keys[:39])}


def test_each_kind_is_skipped_and_counted_from_worker_processes(broken):
    spec = StreamSpec(source=str(broken["dir"]), batch_size=15, num_workers=2, max_bad_fraction=1.0,
                      augment=True, shuffle_buffer=50)  # 2 × 15 divides 300: no planned repeats
    bad_total, steps = {}, set()
    keys = []
    for rank in range(2):
        loader = make_loader(spec, rank=rank, world_size=2)
        batches = list(loader)
        steps.add((len(loader), len(batches)))
        assert all(len(b["key"]) == 15 and b["views"].shape[0] == 2 * 15 for b in batches)
        for kind, n in loader.stats["bad"].items():
            bad_total[kind] = bad_total.get(kind, 0) + n
        rank_keys = [k for b in batches for k in b["key"]]
        keys += rank_keys
        # a bad sample is replaced by a good one of its batch (seen twice there; a batch with no good sample
        # takes the dataset's first decodable ones) and counted as repeated
        bad = sum(loader.stats["bad"].values())
        twice = sum(len(b["key"]) - len(set(b["key"])) for b in batches)
        assert loader.stats["repeated"] == bad and 0 < twice <= bad
        assert loader.stats["bad_examples"]
    assert steps == {(10, 10)}                                            # 300 / 30 on both ranks
    assert {k: v for k, v in bad_total.items() if v} == broken["expected"]
    assert broken["corrupt"][1] not in keys and broken["missing"][1] not in keys
    assert set(broken["truncated"][1]) <= set(keys)                       # the samples before the break are read


def test_probe_pass_leaves_bad_samples_out(broken):
    spec = StreamSpec(source=str(broken["dir"]), batch_size=50, num_workers=0, max_bad_fraction=1.0, augment=False,
                      num_views=1, shuffle=False, equalize=False)
    loader = make_loader(spec)
    n = sum(len(b["key"]) for b in loader)
    assert n == 300 - sum(broken["expected"].values())
    assert loader.stats["seen"] == n and loader.stats["repeated"] == 0


def test_past_max_bad_fraction_the_error_names_shard_and_sample(broken):
    spec = StreamSpec(source=str(broken["dir"]), batch_size=16, num_workers=0, max_bad_fraction=0.0,
                      shuffle=False, augment=False, lanes=1)  # one lane: the shards in order, the corrupt one first
    with pytest.raises(BadInputError, match=rf"{broken['corrupt'][0]}, sample {broken['corrupt'][1]}"):
        list(make_loader(spec))


def test_error_crosses_the_worker_process_boundary_intact(broken):
    """From a DataLoader worker the error arrives as itself: its class and one-line message, no worker traceback."""
    spec = StreamSpec(source=str(broken["dir"]), batch_size=16, num_workers=2, max_bad_fraction=0.05, shuffle=False)
    with pytest.raises(BadInputError, match="max_bad_fraction") as info:
        for _ in make_loader(spec):
            pass
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


def test_inspect_reports_every_kind(broken, capsys):
    from cluster.cli import main

    report = inspect_shards(broken["dir"])
    assert {k: v for k, v in report["bad"].items() if v} == broken["expected"]
    assert report["samples_good"] == 300 - sum(broken["expected"].values())
    assert report["samples_good"] + report["bad_total"] == report["samples_expected"] == 300
    assert any(broken["url"] in e for e in report["bad_examples"])
    assert main(["shards", "inspect", str(broken["dir"])]) == 1
    out = capsys.readouterr().out
    assert "unreadable_shard" in out and "truncated_tar" in out


# --- without manifest.json ---------------------------------------------------------------------------------


def tar_of(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, __import__("io").BytesIO(data))


@pytest.fixture(scope="module")
def uncounted(tmp_path_factory, small_shards) -> dict:
    """The digits tars without manifest.json, beside a broken symlink, random bytes, an empty tar, a tar without
    images and a truncated copy of a good shard."""
    d = tmp_path_factory.mktemp("uncounted") / "shards"
    d.mkdir()
    good = sorted(Path(small_shards).glob("*.tar"))
    for p in good:
        shutil.copy(p, d / p.name)
    (d / "x-broken.tar").symlink_to(d / "no-such-target.tar")
    (d / "x-random.tar").write_bytes(os.urandom(5000))
    tar_of(d / "x-empty.tar", {})
    tar_of(d / "x-noimage.tar", {"a.txt": b"hello", "a.cls": b"1", "b.json": b"{}"})
    raw = good[0].read_bytes()
    (d / "x-truncated.tar").write_bytes(raw[: len(raw) // 2 + 100])       # cut inside a sample
    readable = []
    with pytest.raises(OSError):
        for key, _ in iter_members_grouped(str(d / "x-truncated.tar")):
            readable.append(key)
    # 64 is the median size of the shards read to their end: the estimate of each failed shard's samples
    expected = {"unreadable_shard": 64 + 64, "empty_shard": 64, "missing_image": 2, "truncated_tar": 64 - len(readable)}
    return {"dir": d, "expected": expected, "readable": readable, "samples": 300 + 2 + 4 * 64}


def test_shards_without_manifest_are_counted_by_kind(uncounted):
    spec = StreamSpec(source=str(uncounted["dir"]), batch_size=20, num_workers=2, max_bad_fraction=1.0, augment=False)
    bad: dict[str, int] = {}
    keys = []
    for rank in range(2):
        loader = make_loader(spec, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == len(loader) and all(len(b["key"]) == 20 for b in batches)
        for kind, n in loader.stats["bad"].items():
            bad[kind] = bad.get(kind, 0) + n
        keys += [k for b in batches for k in b["key"]]
    assert {k: v for k, v in bad.items() if v} == uncounted["expected"]
    assert len(uncounted["readable"]) > 10
    assert keys.count(uncounted["readable"][0]) >= 2      # the truncated copy's complete samples are read
    m = resolve_shards(str(uncounted["dir"]))
    failures = {Path(s.name).name: s.failure_kind for s in m.shards if s.failure}
    assert failures == {"x-broken.tar": "unreadable_shard", "x-random.tar": "unreadable_shard",
                        "x-empty.tar": "empty_shard", "x-truncated.tar": "truncated_tar"}
    assert m.num_samples == uncounted["samples"]


def test_fraction_check_sees_uncounted_shards(uncounted):
    spec = StreamSpec(source=str(uncounted["dir"]), batch_size=20, num_workers=0, augment=False, shuffle=False)
    with pytest.raises(BadInputError, match=r"exceed max_bad_fraction=0\.01.*x-"):
        list(make_loader(spec))


def test_inspect_and_plan_without_manifest_name_the_failed_shards(uncounted, capsys):
    from cluster.cli import main

    r = inspect_shards(str(uncounted["dir"]))
    assert {k: v for k, v in r["bad"].items() if v} == uncounted["expected"]
    assert r["samples_good"] + r["bad_total"] == r["samples_expected"] == uncounted["samples"]
    assert r["samples_good"] == 300 + len(uncounted["readable"])
    assert main(["shards", "plan", str(uncounted["dir"]), "--batch-size", "64", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    failed = {Path(f["name"]).name: f for f in plan["failed_shards"]}
    assert set(failed) == {"x-broken.tar", "x-random.tar", "x-empty.tar", "x-truncated.tar"}
    assert failed["x-truncated.tar"]["readable"] == len(uncounted["readable"])
    assert failed["x-random.tar"]["failure"].startswith("unreadable_shard: ") and "not a tar" in failed["x-random.tar"]["failure"]
    assert main(["shards", "plan", str(uncounted["dir"]), "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "4 shards could not be counted" in out and all(n in out for n in failed)
    assert main(["shards", "inspect", str(uncounted["dir"])]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert f"{r['samples_good']} good + {r['bad_total']} bad = {r['samples_expected']} samples" in first


def test_every_shard_unreadable_names_them(tmp_path, capsys):
    from cluster.cli import main

    (tmp_path / "a.tar").symlink_to(tmp_path / "gone.tar")
    (tmp_path / "b.tar").write_bytes(b"\x00\x01" * 700)
    tar_of(tmp_path / "c.tar", {})
    with pytest.raises(UserInputError, match=r"no shard could be read: .*a\.tar.*b\.tar.*c\.tar"):
        resolve_shards(str(tmp_path))
    spec = StreamSpec(source=str(tmp_path), batch_size=4, num_workers=0)
    with pytest.raises(UserInputError, match="no shard could be read"):
        make_loader(spec)
    assert main(["shards", "plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bigbatch shards plan: ") and "a.tar" in err and err.count("\n") == 1


def test_a_sample_without_a_label_is_unlabelled_never_class_0(tmp_path, small_shards):
    """A sample without a ``.cls`` member takes its manifest's label; with no manifest either it is UNLABELLED in
    the stream (never class 0), and the probe refuses the shards naming them."""
    from data_pipeline.manifest import UNLABELLED
    from eval.features import extract_features

    listed, bare = tmp_path / "listed", tmp_path / "bare"
    shutil.copytree(small_shards, listed)
    first = sorted(listed.glob("*.tar"))[0]
    labels = {key: int(files["cls"]) for key, files in iter_members_grouped(str(first))}
    rewrite(first, lambda i, key, files: {k: v for k, v in files.items() if k != "cls"} if i == 3 else files)
    relist(listed, 0)
    bare.mkdir()
    shutil.copy(first, bare / first.name)
    unlabelled = list(labels)[3]

    def stream_labels(source: Path) -> dict[str, int]:
        spec = StreamSpec(source=str(source), batch_size=64, num_workers=0, augment=False, shuffle=False,
                          equalize=False)
        return {k: int(y) for b in make_loader(spec) for k, y in zip(b["key"], b["label"], strict=True)}

    assert {k: v for k, v in stream_labels(listed).items() if k in labels} == labels  # the manifest's label
    assert stream_labels(bare) == {**labels, unlabelled: UNLABELLED}
    assert resolve_shards(str(bare)).shards[0].labels[3] == UNLABELLED
    with pytest.raises(UserInputError, match=f"{bare}: 1 of 64 samples have no label"):
        extract_features(lambda x: x.float().flatten(1), str(bare), image_size=8, num_workers=0)
