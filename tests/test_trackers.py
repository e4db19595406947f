"""Experiment trackers fed by the driver: a Ray run (2 workers) logged to MLflow (local file store) and W&B
(offline) — parameters, every metric at its step, the probe's figures, the report and loss curve — then resumed
with more steps into the same tracker runs; and trackers that cannot be reached: one warning line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import free_port

from cluster.run_config import load_run_config


def wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's protobuf ``Record`` messages in LevelDB's log framing (7-byte file header,
    32 KiB blocks, each chunk: crc32 (4), length (2), type (1 full, 2 first, 3 middle, 4 last))."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's zero-padded tail
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def wandb_history(run_dir: Path, run_id: str) -> tuple[list[dict], list[str]]:
    """(history rows, saved file names) over every offline run directory of ``run_id`` (one per attempt)."""
    rows, files = [], []
    for f in sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        for rec in wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "files":
                files += [x.path for x in rec.files.files]
    return rows, files


@pytest.fixture
def tracker_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this (or a database) for a local store
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_unreachable_trackers_warn_once_and_the_run_goes_on(tracker_env, monkeypatch, capfd):
    from cluster.trackers import Trackers

    monkeypatch.setenv("WANDB_MODE", "online")   # online, without a login
    monkeypatch.setenv("HOME", str(tracker_env))  # no ~/.netrc holding a key
    run_dir = tracker_env / "run"
    run_dir.mkdir()
    cfg = load_run_config(None, ["name=offline", "tracking.backends=[tensorboard,mlflow,wandb]",
                                 f"tracking.mlflow_uri=http://127.0.0.1:{free_port()}"])
    trackers = Trackers(cfg, run_dir)
    assert list(trackers.active) == ["tensorboard"]
    trackers.log_metrics({"train/loss": 1.0}, 1)
    trackers.log_artifact(run_dir / "missing.png")
    trackers.close()
    lines = [x for x in capfd.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("bigbatch: warning: mlflow tracking is off for this run") and "127.0.0.1" in lines[0]
    assert lines[1].startswith("bigbatch: warning: wandb tracking is off for this run")
    assert list((run_dir / "tb").iterdir())


@pytest.mark.slow
def test_mlflow_and_wandb_record_a_run_and_its_resume(ray_local, digits_shards, tracker_env):
    from mlflow import MlflowClient

    from cluster.launch import run_pretrain

    uri = f"file://{tracker_env / 'mlruns'}"

    def cfg(steps: int):
        return load_run_config(None, [
            "model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=16",
            f"data.train={digits_shards['train']}", f"data.probe_test={digits_shards['holdout']}", "batch_size=64",
            f"steps={steps}", "log_every=2", "checkpoint_every=3", "cluster.workers=2", "eval.knn=false",
            f"cluster.storage_path={tracker_env / 'runs'}", "name=tracked",
            "tracking.backends=[tensorboard,mlflow,wandb]", f"tracking.mlflow_uri={uri}"])

    run_dir = run_pretrain(cfg(6), show_progress=False)
    ids = json.loads((run_dir / "trackers.json").read_text())
    probe = json.loads((run_dir / "probe.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(ids["mlflow"])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["name"] == "tracked" and run.data.params["loss.name"] == "ranking"
    assert run.data.params["steps"] == "6"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4, 6]
    assert {"train/images_per_s", "train/data_wait_fraction", "train/epoch_bad_samples", "train/lr"} <= set(run.data.metrics)
    final = client.get_metric_history(run.info.run_id, "probe_top1")
    assert [(m.step, m.value) for m in final] == [(6, pytest.approx(probe["method"]["top1"]))]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.md", "loss_curve.png"}

    rows, files = wandb_history(run_dir, ids["wandb"])
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6]
    assert [r["probe_top1"] for r in rows if "probe_top1" in r] == [pytest.approx(probe["method"]["top1"])]
    assert {"report.md", "loss_curve.png"} <= set(files)

    run_dir = run_pretrain(cfg(8), show_progress=False)  # resumed with more steps: the same tracker runs continue
    assert json.loads((run_dir / "trackers.json").read_text()) == ids
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_with.steps"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4, 6, 8]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "probe_top1")] == [6, 8]
    rows, _ = wandb_history(run_dir, ids["wandb"])
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6, 8]
