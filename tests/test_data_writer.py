"""Writer round trip: every sample back byte-identical with the right label; stratified holdout; safe unique keys;
checksums; the race-safe built-in digits cache; `bigbatch shards write|inspect`. The writer tells the truth before
writing (bad files reported and skipped or refused, empty classes and clashing arguments refused) and a failed or
killed write leaves the previous shards readable as they were (see test_data_write_atomic.py)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
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


def assert_stored_as_is(shards: Path, folder: Path, ext: str):
    """Every image of ``folder`` is one sample of ``shards``: its bytes as stored (no re-encoding), its label its
    class folder's, a safe key. Returns the manifest."""
    samples, labels = read_split(shards)
    m = load_manifest(shards)
    files = sorted(Path(folder).rglob(f"*.{ext}"))
    assert len(files) == len(samples) == 300
    by_key = {f"{p.parent.name}_{p.stem}": p for p in files}
    assert set(by_key) == set(samples)
    for key, path in by_key.items():
        assert samples[key][ext] == path.read_bytes()   # stored as is, no re-encoding
        assert m.classes[labels[key]] == path.parent.name
        assert int(samples[key]["cls"]) == labels[key]
    assert all(KEY_RE.match(k) for k in samples)
    return m


def test_folder_round_trip_bytes_as_stored(digits_folder, small_shards):
    m = assert_stored_as_is(small_shards, digits_folder, "png")
    assert m.image_size == [8, 8] and [s.samples for s in m.shards] == [64, 64, 64, 64, 44]


def test_cifar_round_trip_bytes_as_stored(cifar_dir, cifar_shards):
    """The same on real JPEGs (an extra: skips where the CIFAR-10 archive is not beside the repository)."""
    m = assert_stored_as_is(cifar_shards, cifar_dir, "jpg")
    assert m.image_size == [32, 32]


def test_keys_are_safe_and_unique():
    names = ["cat/a.b.jpg", "cat/a b", "cat_a_b", "cat/a_b", "../../etc", "", "x.y", "x_y"]
    keys = unique_keys(names)
    assert len(set(keys)) == len(keys)
    assert all(KEY_RE.match(k) for k in keys)


def test_write_cli_and_holdout_dir_default(tmp_path, digits_folder, capsys):
    from cluster.cli import main

    out = tmp_path / "d10"
    assert main(["shards", "write", str(digits_folder), str(out), "--shard-size", "70", "--holdout", "0.2",
                 "--seed", "3"]) == 0
    m, h = load_manifest(out), load_manifest(tmp_path / "d10-holdout")
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


def test_builtin_names_resolve_to_the_cached_split(tmp_path, monkeypatch):
    from data_pipeline.builtin import ensure_digits, resolve_builtin

    monkeypatch.setenv("BIGBATCH_CACHE", str(tmp_path))
    train, hold = ensure_digits()
    assert (resolve_builtin("digits"), resolve_builtin("digits-holdout")) == (str(train), str(hold))
    assert resolve_builtin("shards/{0..3}.tar") == "shards/{0..3}.tar" and resolve_builtin(["digits"]) == ["digits"]


def test_tar_reader_reads_what_tarfile_reads(tmp_path, small_shards):
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

    paths = sorted(Path(small_shards).glob("*.tar"))[:2]
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


# --- the truth at write time -----------------------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path, digits_folder) -> Path:
    """The 300-digit folder plus a zero-byte PNG, an HTML page named .jpg, a PNG cut in half (its header intact)
    and a text file."""
    d = tmp_path / "messy"
    shutil.copytree(digits_folder, d)
    (d / "3" / "empty.png").write_bytes(b"")
    (d / "4" / "page.jpg").write_text("<html>404 not found</html>")
    png = next((d / "5").glob("*.png")).read_bytes()
    (d / "5" / "cut.png").write_bytes(png[: len(png) // 2])
    (d / "6" / "notes.txt").write_text("hello")
    return d


def test_write_reports_bad_files_by_name_and_skips_them(tmp_path, messy_folder, capsys):
    from cluster.cli import main

    assert main(["shards", "write", str(messy_folder), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad image files" in out
    assert f"{messy_folder / '3' / 'empty.png'}: empty file (0 bytes)" in out
    assert f"{messy_folder / '4' / 'page.jpg'}: not an image (no known image header)" in out
    assert "ignored 1 file (no image extension, or outside a class folder)" in out and "notes.txt" in out
    keys = {k for s in load_manifest(tmp_path / "out").shards for k in s.keys}
    assert len(keys) == 301 and "5_cut" in keys and "3_empty" not in keys and "4_page" not in keys
    assert main(["shards", "write", str(messy_folder), str(tmp_path / "verified"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 bad image files" in out and f"{messy_folder / '5' / 'cut.png'}: does not decode" in out
    assert load_manifest(tmp_path / "verified").num_samples == 300


def test_strict_refuses_bad_files_before_writing(tmp_path, messy_folder, capsys):
    from cluster.cli import main

    assert main(["shards", "write", str(messy_folder), str(tmp_path / "out"), "--strict", "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bigbatch shards write: {messy_folder}: 3 bad image files (--strict refuses them; nothing was "
                          "written): ") and err.count("\n") == 1 and "empty.png (empty file (0 bytes))" in err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["messy"]


def test_a_class_without_images_is_an_error(tmp_path, digits_folder, capsys):
    from cluster.cli import main

    src = tmp_path / "src"
    shutil.copytree(digits_folder, src)
    (src / "extra").mkdir()                                   # an empty class folder
    (src / "only_bad").mkdir()
    (src / "only_bad" / "x.png").write_bytes(b"")             # a class whose only file is bad
    assert main(["shards", "write", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"bigbatch shards write: {src}: 2 classes without a readable image: extra, only_bad (remove their "
                   "folders or add images)\n")
    assert not (tmp_path / "out").exists()


def test_argument_clashes_are_refused_before_anything_is_written(tmp_path, digits_folder, capsys):
    from cluster.cli import main

    out = tmp_path / "out"
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.pdf").write_text("x")
    src = str(digits_folder)
    cases = [
        ([src, str(out), "--holdout", "0.2", "--holdout-dir", str(out)], "must be two separate directories"),
        ([src, str(out), "--holdout", "0.2", "--holdout-dir", str(out / "h")], "must be two separate directories"),
        ([src, str(out), "--holdout", "1.5"], "holdout 1.5: not in [0, 1)"),
        ([src, str(out), "--holdout", "0.01"], "holdout 0.01: leaves the holdout without samples"),
        ([src, str(out), "--holdout-dir", str(tmp_path / "h")], "given without --holdout"),
        ([src, str(tmp_path / "a_file")], "the output exists and is not a directory"),
        ([src, str(out), "--holdout", "0.2", "--holdout-dir", str(tmp_path / "a_file")], "the holdout dir exists"),
        ([src, str(tmp_path / "foreign")], "holds files that `bigbatch shards write` did not write (thesis.pdf)"),
        ([str(tmp_path / "nowhere"), str(out)], f"{tmp_path / 'nowhere'}: no such directory"),
        ([str(tmp_path / "a_file"), str(out)], f"{tmp_path / 'a_file'}: not a directory"),
        ([src, str(digits_folder / "shards")], "inside the source"),
        ([src, str(out), "--shard-size", "0"], "shard size 0: must be >= 1"),
    ]
    for args, message in cases:
        assert main(["shards", "write", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("bigbatch shards write: ") and message in err and err.count("\n") == 1, (args, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "foreign"], args
        assert not (digits_folder / "shards").exists()
