"""Writer round trip: every sample back byte-identical with the right label; stratified holdout; safe unique keys;
checksums; the race-safe built-in digits cache; `bigbatch shards write|inspect`."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data_pipeline.manifest import load_manifest
from data_pipeline.sources import digits
from data_pipeline.tario import iter_members_grouped
from data_pipeline.writer import unique_keys

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def read_split(directory: Path) -> tuple[dict[str, dict], dict[str, int]]:
    """All samples of a shard directory: key → members, and key → manifest label."""
    m = load_manifest(directory)
    samples: dict[str, dict] = {}
    labels: dict[str, int] = {}
    for i, info in enumerate(m.shards):
        got = list(iter_members_grouped(m.url(i)))
        assert [k for k, _ in got] == info.keys
        assert len(got) == info.samples
        for (key, files), label in zip(got, info.labels, strict=True):
            assert key not in samples, f"duplicate key {key}"
            samples[key] = files
            labels[key] = label
        path = Path(m.url(i))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info.sha256
        assert path.stat().st_size == info.bytes
    return samples, labels


def test_digits_round_trip_and_stratified_holdout(digits_shards):
    src = digits()
    keys = unique_keys(src.names)
    train, train_labels = read_split(digits_shards["train"])
    hold, hold_labels = read_split(digits_shards["holdout"])
    assert not set(train) & set(hold)
    assert len(train) + len(hold) == len(src) == 1797
    everything = {**train, **hold}
    labels = {**train_labels, **hold_labels}
    for i, key in enumerate(keys):
        data, ext = src.read(i)
        assert everything[key][ext] == data               # byte-identical PNG
        assert int(everything[key]["cls"]) == src.labels[i] == labels[key]
    per_class = Counter(src.labels)
    held = Counter(hold_labels.values())
    for c, n in per_class.items():
        assert held[c] == round(0.2 * n)
    m = load_manifest(digits_shards["train"])
    assert m.image_size == [8, 8] and m.classes == [str(c) for c in range(10)]
    assert all(s.samples <= 256 for s in m.shards)


def test_cifar_round_trip_bytes_as_stored(cifar_dir, cifar_shards):
    samples, labels = read_split(cifar_shards)
    m = load_manifest(cifar_shards)
    files = sorted(p for p in Path(cifar_dir).rglob("*.jpg"))
    assert len(files) == len(samples) == 300
    by_key = {f"{p.parent.name}_{p.stem}": p for p in files}
    assert set(by_key) == set(samples)
    for key, path in by_key.items():
        assert samples[key]["jpg"] == path.read_bytes()   # stored as is, no re-encoding
        assert m.classes[labels[key]] == path.parent.name
        assert int(samples[key]["cls"]) == labels[key]
    assert all(KEY_RE.match(k) for k in samples)
    assert m.image_size == [32, 32]


def test_keys_are_safe_and_unique():
    names = ["cat/a.b.jpg", "cat/a b", "cat_a_b", "cat/a_b", "../../etc", "", "x.y", "x_y"]
    keys = unique_keys(names)
    assert len(set(keys)) == len(keys)
    assert all(KEY_RE.match(k) for k in keys)


def test_write_cli_and_holdout_dir_default(tmp_path, cifar_dir, capsys):
    from cluster.cli import main

    out = tmp_path / "c10"
    assert main(["shards", "write", str(cifar_dir), str(out), "--shard-size", "70", "--holdout", "0.2",
                 "--seed", "3"]) == 0
    m, h = load_manifest(out), load_manifest(tmp_path / "c10-holdout")
    assert (m.num_samples, h.num_samples) == (240, 60)
    assert [s.samples for s in m.shards] == [70, 70, 70, 30]
    assert Counter(lab for s in h.shards for lab in s.labels) == Counter({c: 6 for c in range(10)})
    capsys.readouterr()
    assert main(["shards", "inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples_good"] == 240 and report["bad_total"] == 0
    assert report["per_class"] == {c: 24 for c in m.classes}


def test_ensure_digits_written_once_when_two_processes_race(tmp_path):
    code = ("import sys; from data_pipeline.builtin import ensure_digits; "
            "t, h = ensure_digits(sys.argv[1]); print(t, h)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert [p.name for p in tmp_path.iterdir()] == ["digits-v1"]          # no temp dir left behind
    train, hold = map(Path, outs[0])
    assert load_manifest(train).num_samples + load_manifest(hold).num_samples == 1797


def test_tar_reader_reads_what_tarfile_reads(tmp_path, cifar_shards):
    """The stream's tar reader against Python's tarfile: webdataset shards, and pax / GNU / ustar archives with
    long names, non-ASCII names, float mtimes and directories."""
    import io
    import tarfile

    from data_pipeline.tario import iter_grouped

    def with_tarfile(path):
        with tarfile.open(path, "r|") as t:
            return sorted((m.name, t.extractfile(m).read()) for m in t if m.isreg())

    def with_stream(path):
        return sorted((f"{key}.{ext}", data) for _, key, files in iter_grouped(str(path)) for ext, data in files.items())

    paths = sorted(Path(cifar_shards).glob("*.tar"))[:2]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        path = tmp_path / f"fmt{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as t:
            names = ["d" * 120 + "/k1.jpg", "dir/k2.cls" if fmt == tarfile.USTAR_FORMAT else "dir/ünï_k2.cls", "k3.png"]
            for i, name in enumerate(names):
                data = bytes(range(256)) * (i + 1) + b"x" * i
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1.5
                t.addfile(info, io.BytesIO(data))
            d = tarfile.TarInfo("adir")
            d.type = tarfile.DIRTYPE
            t.addfile(d)
        paths.append(path)
    for path in paths:
        assert with_stream(path) == with_tarfile(path)
