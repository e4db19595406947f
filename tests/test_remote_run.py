"""A run whose storage path is a bucket (the loopback S3 server), logged to MLflow (local file store) and W&B
(offline): the whole run directory lands in the bucket, so after the driver's local copy is deleted
`bigbatch compare`, `bigbatch probe` and `bigbatch export` read the run from the bucket, and
rerunning the name resumes from the bucket alone — continuing the same MLflow and W&B runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import s3_env
from tracker_utils import offline_env, wandb_history

pytestmark = pytest.mark.slow

RUN_FILES = {"config.yaml", "metrics.jsonl", "workers.json", "train_summary.json", "probe.json", "report.md",
             "loss_curve.png", "trackers.json"}


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def test_run_lives_in_the_bucket(s3_endpoint, digits_shards, tmp_path, monkeypatch, capsys):
    import boto3
    import fsspec
    from mlflow import MlflowClient

    from cluster.cli import main

    for k, v in {**s3_env(s3_endpoint), **offline_env(tmp_path)}.items():
        monkeypatch.setenv(k, v)
    env = {**os.environ, "BIGBATCH_RUNS": str(tmp_path / "driver")}
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="team")
    url, mlflow_uri = "s3://team/runs/remote", f"file://{tmp_path / 'mlruns'}"
    items = ["model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=16",
             f"data.train={digits_shards['train']}", f"data.probe_test={digits_shards['holdout']}", "batch_size=64",
             "log_every=2", "checkpoint_every=2", "cluster.workers=1", "cluster.storage_path=s3://team/runs",
             "name=remote", "tracking.backends=[tensorboard,mlflow,wandb]", f"tracking.mlflow_uri={mlflow_uri}"]
    _cli(env, "pretrain", *items, "steps=4", "--no-progress")

    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint}, key="test", secret="test")
    stored = {p.removeprefix("team/runs/remote/") for p in fs.find("team/runs/remote")}
    assert stored >= RUN_FILES, RUN_FILES - stored
    assert any(p.startswith("tb/events.out.tfevents") for p in stored)
    assert any(p.startswith("wandb/offline-run-") and p.endswith(".wandb") for p in stored)
    assert any(p.startswith("checkpoint_") and p.endswith("/state.pt") for p in stored)
    assert not any(p.endswith(".tmp") for p in stored)
    probe = json.loads(fs.cat("team/runs/remote/probe.json"))
    assert probe["checkpoint"].startswith(f"{url}/checkpoint_") and probe["step"] == 4

    ids = json.loads(fs.cat("team/runs/remote/trackers.json"))  # MLflow: params, metrics at their steps, artifacts
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(ids["mlflow"])
    assert run.info.run_name == "remote" and run.info.status == "FINISHED"
    assert run.data.params["name"] == "remote" and run.data.params["loss.name"] == "ranking"
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "train/loss")] == [2, 4]
    assert {"train/images_per_s", "train/data_wait_fraction", "train/epoch_bad_samples", "train/lr"} <= set(run.data.metrics)
    assert [(m.step, m.value) for m in client.get_metric_history(ids["mlflow"], "probe_top1")] == \
        [(4, pytest.approx(probe["method"]["top1"]))]
    assert {a.path for a in client.list_artifacts(ids["mlflow"])} >= {"report.md", "loss_curve.png"}
    rows, files = wandb_history(tmp_path / "driver" / "remote", ids["wandb"])  # W&B: the offline run's records
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4]
    assert [r["probe_top1"] for r in rows if "probe_top1" in r] == [pytest.approx(probe["method"]["top1"])]
    assert {"report.md", "loss_curve.png"} <= set(files)

    shutil.rmtree(tmp_path / "driver")  # the driver's pod is gone: only the bucket is left
    assert main(["compare", url, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["run"] == "remote" and row["steps"] == 4 and row["probe_top1"] == probe["method"]["top1"]
    assert main(["probe", url, "--train", str(digits_shards["train"]), "--test", str(digits_shards["holdout"]),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["checkpoint"] == probe["checkpoint"] and again["method"]["top1"] == probe["method"]["top1"]
    assert main(["export", url, "--out", str(tmp_path / "exported")]) == 0  # `bigbatch export` reads the bucket
    assert (tmp_path / "exported" / "model.safetensors").is_file()

    _cli(env, "pretrain", *items, "steps=6", "--no-progress")  # resume from the bucket alone
    summary = json.loads(fs.cat("team/runs/remote/train_summary.json"))
    assert summary["final"]["step"] == 6 and summary["resumed_at_steps"] == [4]
    lines = [json.loads(x) for x in fs.cat("team/runs/remote/metrics.jsonl").decode().splitlines()]
    assert [m["event"] for m in lines if m.get("event") in ("start", "end")] == ["start", "end", "start", "end"]
    assert [m["step"] for m in lines if "loss" in m] == [2, 4, 6]  # the first attempt's history continues
    assert json.loads(fs.cat("team/runs/remote/probe.json"))["step"] == 6
    assert json.loads(fs.cat("team/runs/remote/trackers.json")) == ids  # the same tracker runs continue
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_with.steps"] == "6"
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "train/loss")] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "probe_top1")] == [4, 6]
    rows, _ = wandb_history(tmp_path / "driver" / "remote", ids["wandb"])
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6]
