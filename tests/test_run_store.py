"""A run directory at a URL (pretrain/run_store.py) against the loopback S3 server and a local path: mirroring a
working copy (only what changed, each file whole, train_summary.json last), pulling it back, listing and
downloading checkpoints, and `bigbatch compare` on a URL."""

from __future__ import annotations

import json
import re

import pytest
from conftest import s3_env

from pretrain.run_store import RunMirror, RunStore, checkpoint_location, is_run_file, local_checkpoint


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    import boto3

    for k, v in s3_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"runs-{len(client.list_buckets()['Buckets'])}"
    client.create_bucket(Bucket=name)
    return name


def _directory_markers(bucket: str, *keys: str) -> None:
    """Empty ``dir/`` objects, as pyarrow (Ray's storage layer) writes them: not files of the run."""
    import boto3

    for key in keys:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"")


def _working_copy(root):
    (root / "tb").mkdir(parents=True)
    (root / "config.yaml").write_text("name: r\n")
    (root / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (root / "tb" / "events.out.tfevents.1").write_bytes(b"\x00" * 100)
    (root / "train_summary.json").write_text('{"final": {"step": 1}}')
    (root / ".workers.json.tmp").write_text("half")           # a write in progress: never mirrored
    (root / "checkpoint_000001").mkdir()                          # Ray's: never mirrored
    (root / "checkpoint_000001" / "state.pt").write_bytes(b"x")


def test_run_file_filter():
    assert is_run_file("metrics.jsonl") and is_run_file("tb/events.out.tfevents.1") and is_run_file("artifacts/a.png")
    assert not is_run_file("checkpoint_2026-01-01_00-00-00.000000/state.pt")
    assert not is_run_file("checkpoint_manager_snapshot.json") and not is_run_file(".probe.json.tmp")


def test_mirror_to_s3_and_pull_back(tmp_path, bucket):
    local = tmp_path / "local" / "r"
    _working_copy(local)
    store = RunStore(f"s3://{bucket}/runs/r")
    mirror = RunMirror(local, store)
    sent = mirror.sync()
    assert sent[-1] == "train_summary.json"  # last: its presence marks a complete run
    assert sorted(sent) == ["config.yaml", "metrics.jsonl", "tb/events.out.tfevents.1", "train_summary.json"]
    store.refresh()
    assert store.run_files() == sorted(sent)
    assert not [p for p in store.fs.find(store.root) if p.endswith(".tmp")]  # temp keys moved into place
    assert mirror.sync() == []  # nothing changed
    with open(local / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "loss": 1.5}\n')
    assert mirror.sync() == ["metrics.jsonl"]
    assert store.read_text("metrics.jsonl").count("\n") == 2
    assert store.read_text("probe.json") is None

    _directory_markers(bucket, "runs/", "runs/r/", "runs/r/tb/")
    fresh = tmp_path / "elsewhere" / "r"  # another driver, no local copy: pull the run files
    pulled = RunMirror(fresh, RunStore(f"s3://{bucket}/runs/r")).pull()
    assert sorted(pulled) == sorted(sent)
    assert (fresh / "metrics.jsonl").read_text() == (local / "metrics.jsonl").read_text()
    assert (fresh / "tb" / "events.out.tfevents.1").read_bytes() == b"\x00" * 100
    mirror.remove("train_summary.json")
    store.refresh()
    assert not store.exists("train_summary.json") and not (local / "train_summary.json").exists()


def test_checkpoints_at_a_url(tmp_path, bucket):
    import torch

    store = RunStore(f"s3://{bucket}/runs/c")
    for name, step in (("checkpoint_2026-01-01_00-00-01.000000", 4), ("checkpoint_2026-01-01_00-00-02.000000", 8)):
        src = tmp_path / name
        src.mkdir()
        torch.save({"step": step}, src / "state.pt")
        store.upload(src / "state.pt", f"{name}/state.pt")
    store.upload(src / "state.pt", "checkpoint_2026-01-01_00-00-03.000000/rng-rank0.pt")  # incomplete: no state.pt
    _directory_markers(bucket, "runs/c/", "runs/c/checkpoint_2026-01-01_00-00-02.000000/")
    assert store.checkpoints() == ["checkpoint_2026-01-01_00-00-01.000000", "checkpoint_2026-01-01_00-00-02.000000"]
    latest = checkpoint_location(store.url)
    assert latest == f"{store.url}/checkpoint_2026-01-01_00-00-02.000000"
    assert checkpoint_location(f"{latest}/state.pt") == latest
    with local_checkpoint(store.url) as d:
        assert torch.load(d / "state.pt", weights_only=True)["step"] == 8
    assert not d.exists()  # the temporary copy is gone
    with pytest.raises(ValueError, match="no bigbatch checkpoint"):
        checkpoint_location(f"s3://{bucket}/runs/none")


def test_compare_reads_a_run_at_a_url(tmp_path, bucket, capsys):
    from cluster.cli import main

    local = tmp_path / "r"
    local.mkdir()
    (local / "config.yaml").write_text("name: r\nmethod: simclr\nbatch_size: 64\nloss: {name: ranking}\n"
                                       "gan: {loss: nonsaturating}\nvae: {likelihood: gaussian}\n")
    (local / "train_summary.json").write_text(json.dumps({"wall_time_s": 5.0, "final": {"step": 4}}))
    (local / "probe.json").write_text(json.dumps({"method": {"top1": 0.5, "knn_top1": 0.25}}))
    RunMirror(local, RunStore(f"s3://{bucket}/runs/r")).sync()
    assert main(["compare", f"s3://{bucket}/runs/r", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["run"] == "r" and row["steps"] == 4 and row["probe_top1"] == 0.5
    assert main(["compare", f"s3://{bucket}/runs/missing"]) == 2
    assert "not a bigbatch run directory" in capsys.readouterr().err


def test_unusable_storage_path_is_one_line(tmp_path, bucket, monkeypatch, capsys):
    import cluster.run_dir
    from cluster.cli import main

    monkeypatch.setattr(cluster.run_dir, "DEFAULT_STORAGE", tmp_path)  # the driver's working copies
    for storage, why in ((f"s3://{bucket}-missing/runs", "NoSuchBucket|not exist|FileNotFoundError"),
                         ("nosuchproto://x/runs", "nosuchproto")):
        assert main(["pretrain", f"cluster.storage_path={storage}", "name=r", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"bigbatch pretrain: cluster.storage_path={storage}: cannot be used")
        assert re.search(why, err[0]), err[0]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_artifacts_collected_again_when_a_copy_was_taken_mid_write(tmp_path, where, request):
    """collect_artifacts copies a checkpoint's PNGs that are missing in run_dir/artifacts or of another size there
    (taken while Ray was still writing them), and leaves complete ones alone."""
    from cluster.artifacts import collect_artifacts

    url = str(tmp_path / "store") if where == "local" else f"s3://{request.getfixturevalue('bucket')}/runs/a"
    store = RunStore(url)
    ckpt, run_dir = "checkpoint_2026-01-01_00-00-01.000000", tmp_path / "run"
    full = {"vae-recon-step00000004.png": b"\x89PNG" + b"r" * 300, "vae-samples-step00000004.png": b"\x89PNG" + b"s" * 200}
    for name, data in full.items():
        (tmp_path / name).write_bytes(data)
        store.upload(tmp_path / name, f"{ckpt}/artifacts/{name}")
    (run_dir / "artifacts").mkdir(parents=True)
    (run_dir / "artifacts" / "vae-recon-step00000004.png").write_bytes(full["vae-recon-step00000004.png"][:100])
    copied = collect_artifacts(store, ckpt, run_dir)
    assert sorted(p.name for p in copied) == sorted(full)
    assert {p.name: p.read_bytes() for p in (run_dir / "artifacts").iterdir()} == full
    assert collect_artifacts(store, ckpt, run_dir) == []  # complete: nothing copied again
