"""A failed or interrupted `shards write` never leaves something that reads as valid: after a disk-full write (an
injected ENOSPC, and a real small tmpfs where mount namespaces are available), a writer killed mid-write, or a
failed publish, the directory holds exactly the previous shards; and the stream refuses a manifest.json that
does not describe the tars beside it (the state the old writer left), naming the shard."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.audit import inspect_shards
from data_pipeline.errors import UserInputError
from data_pipeline.manifest import ManifestMismatch, load_manifest
from data_pipeline.stream import StreamSpec, make_loader
from data_pipeline.writer import write_shards

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def stream_keys(directory: Path) -> list[str]:
    spec = StreamSpec(source=str(directory), batch_size=100, num_workers=0, augment=False, shuffle=False,
                      equalize=False, num_views=1)
    return sorted(k for b in make_loader(spec) for k in b["key"])


@pytest.fixture
def old(tmp_path) -> Path:
    """A complete previous dataset (digits, shards of 256, seed 0) where the new write goes."""
    out = tmp_path / "shards"
    write_shards("digits", out, shard_size=256, seed=0)
    return out


def assert_previous_dataset(out: Path, before: dict[str, bytes]) -> None:
    assert snapshot(out) == before                                  # every file as it was
    m = load_manifest(out)
    assert stream_keys(out) == sorted(k for s in m.shards for k in s.keys)
    report = inspect_shards(out, decode_images=False)
    assert report["bad_total"] == 0 and not report["manifest_mismatch"] and not report["checksum_mismatch"]


def test_disk_full_write_leaves_the_previous_dataset(old, monkeypatch):
    import webdataset.writer

    before = snapshot(old)
    real = webdataset.writer.TarWriter.write
    calls = []

    def full(self, obj):
        calls.append(1)
        if len(calls) > 700:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.fname) if hasattr(self, "fname") else None)
        return real(self, obj)

    monkeypatch.setattr(webdataset.writer.TarWriter, "write", full)
    with pytest.raises(Exception) as info:   # noqa: B017 — the state is checked first, then the error
        write_shards("digits", old, shard_size=200, seed=1)
    assert len(calls) > 700
    assert_previous_dataset(old, before)
    assert sorted(p.name for p in old.parent.iterdir()) == ["shards"]    # no temporary directory left
    assert isinstance(info.value, UserInputError)
    assert str(info.value).startswith(f"No space left on device (writing {old} stopped; it was left as it was)")


FULL_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
from data_pipeline.errors import UserInputError
from data_pipeline.sources import Source, digits
from data_pipeline.writer import write_shards

root = Path(sys.argv[1])
d = digits()
out = root / "shards"
small = Source("digits", d.classes, d.names[:150], d.labels[:150], d.read)     # about 300 KiB of shards
write_shards(small, out, shard_size=50, seed=0)
before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
try:
    write_shards("digits", out, shard_size=100, seed=1)
    print(json.dumps({"error": None}))
except Exception as exc:
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    print(json.dumps({"error": str(exc), "user_error": isinstance(exc, UserInputError), "same": before == after,
                      "entries": sorted(p.name for p in root.iterdir())}))
"""


@pytest.mark.slow
def test_disk_full_on_a_small_tmpfs(tmp_path):
    """A real ENOSPC: a 600 KiB tmpfs in a private mount namespace (skips where unprivileged namespaces are off)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_SCRIPT)
    cmd = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=600k tmpfs "$1" && exec "$2" "$3" "$1"', "sh",
           str(mnt), sys.executable, str(script)]
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=600k tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private tmpfs: {probe.stderr.strip()}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["error"] and "No space left on device" in result["error"]
    assert result["same"] is True and result["entries"] == ["shards"]
    assert result["user_error"] is True


KILLED_SCRIPT = """
import sys, time
import webdataset.writer
from data_pipeline.writer import write_shards

real = webdataset.writer.TarWriter.write
written = [0]

def slow(self, obj):
    written[0] += 1
    if written[0] == 700:                # 700 samples written: stop here until killed
        print("writing", flush=True)
        time.sleep(600)
    return real(self, obj)

webdataset.writer.TarWriter.write = slow
write_shards("digits", sys.argv[1], shard_size=200, seed=1)
"""


@pytest.mark.slow
def test_killed_writer_leaves_the_previous_dataset(old, tmp_path):
    before = snapshot(old)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(old)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert_previous_dataset(old, before)
    leftovers = [p.name for p in old.parent.iterdir() if p.name != "shards"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".shards.bigbatch-")   # hidden: no reader lists it
    r = write_shards("digits", old, shard_size=200, seed=1)                      # a new write completes and
    assert sorted(p.name for p in old.parent.iterdir()) == ["shards"]            # removes the dead writer's dir
    assert stream_keys(old) == sorted(k for s in r.train.shards for k in s.keys)


def test_failed_publish_puts_the_previous_dataset_back(old, monkeypatch):
    before = snapshot(old)
    real = os.rename

    def rename(a, b):
        if "-old-" not in str(a) and ".bigbatch-" in str(a):   # moving the old aside works; renaming the new in fails
            raise OSError(errno.EIO, "Input/output error", str(a))
        return real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(UserInputError, match="Input/output error"):
        write_shards("digits", old, shard_size=200, seed=1)
    monkeypatch.setattr(os, "rename", real)
    assert_previous_dataset(old, before)
    assert sorted(p.name for p in old.parent.iterdir()) == ["shards"]


def test_holdout_pair_is_never_old_and_new_side_by_side(tmp_path, monkeypatch):
    """What a reader finds whenever a shard is started or a directory renamed: both splits old, both new, or one
    of them missing; never a new training split beside the old holdout (or the reverse)."""
    import webdataset.writer

    out, hold = tmp_path / "train", tmp_path / "hold"
    write_shards("digits", out, holdout=0.2, holdout_dir=hold, shard_size=256, seed=0)
    states = []

    def look() -> None:
        states.append({d.name: (load_manifest(d).seed if (d / "manifest.json").exists() else None) for d in (out, hold)})

    real_rename, real_init = os.rename, webdataset.writer.TarWriter.__init__

    def rename(a, b):
        real_rename(a, b)
        look()

    def init(self, *args, **kwargs):
        look()
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(webdataset.writer.TarWriter, "__init__", init)
    write_shards("digits", out, holdout=0.2, holdout_dir=hold, shard_size=256, seed=5)
    look()
    for state in states:
        assert None in state.values() or len(set(state.values())) == 1, states
    assert states[-1] == {"train": 5, "hold": 5} and len(states) > 4


def test_stream_refuses_tars_its_manifest_does_not_describe(old, tmp_path, capsys):
    """What the old writer left after failing part-way: new tars beside the previous manifest.json."""
    from cluster.cli import main

    new = tmp_path / "new"
    write_shards("digits", new, shard_size=200, seed=1)
    for p in old.glob("*.tar"):
        p.unlink()
    for p in sorted(new.glob("*.tar"))[:4]:
        shutil.copy(p, old / p.name)
    spec = StreamSpec(source=str(old), batch_size=64, num_workers=0)
    with pytest.raises(ManifestMismatch, match=r"digits-000000\.tar: \d+ bytes, but manifest.json lists \d+: "
                                               r"manifest.json does not describe this shard"):
        make_loader(spec)
    report = inspect_shards(old)
    assert len(report["manifest_mismatch"]) == 4 and report["samples_good"] == 0
    assert report["samples_good"] + report["bad_total"] + report["samples_mismatched"] == report["samples_expected"]
    assert main(["shards", "plan", str(old)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bigbatch shards plan: {old / 'digits-000000.tar'}: ") and err.count("\n") == 1


def test_stream_refuses_a_sample_count_its_manifest_does_not_list(old):
    """Same bytes, other sample count (a hand-edited or foreign manifest): found where a reader meets the shard's end."""
    manifest = json.loads((old / "manifest.json").read_text())
    spec = StreamSpec(source=str(old), batch_size=64, num_workers=0, shuffle=False, augment=False)
    for listed, message in ((250, "more samples than the 250 manifest.json lists"),
                            (260, "256 samples, but manifest.json lists 260")):
        edited = json.loads(json.dumps(manifest))
        edited["shards"][0].update(samples=listed, keys=edited["shards"][0]["keys"][:listed],
                                   labels=edited["shards"][0]["labels"][:listed])
        (old / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(ManifestMismatch, match=message):
            list(make_loader(spec))
