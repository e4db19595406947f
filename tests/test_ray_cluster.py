"""The same job on an existing multi-node Ray cluster: two Ray nodes started on this machine (127.0.0.1, one CPU
each, run by an interpreter without bigbatch: conftest's two_node_cluster), `bigbatch pretrain --address` placing
the two workers on different nodes with its probes as Ray tasks, and `bigbatch submit` through the Ray Jobs API from a
wheel install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import LOOPBACK_ENV, build_wheel, env_without_bigbatch, free_port, venv_with_test_deps

pytestmark = pytest.mark.slow


def _overrides(digits_shards, storage: Path, name: str) -> list[str]:
    return ["model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=16",
            f"data.train={digits_shards['train']}", f"data.probe_test={digits_shards['holdout']}", "batch_size=64",
            "steps=6", "checkpoint_every=3", "log_every=2", "eval.probe=false", "cluster.workers=2",
            "cluster.cpus_per_worker=1", f"cluster.storage_path={storage}", f"name={name}"]


def test_submit_from_a_wheel_install(two_node_cluster, digits_shards, tmp_path):
    """A fresh venv with the wheel (not editable), a user's config file outside any checkout, submitted from an
    unrelated directory: the cluster's interpreter has no bigbatch, so the job runs only if submit ships it."""
    wheel = build_wheel(tmp_path / "build")
    python = venv_with_test_deps(tmp_path / "client")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    env = env_without_bigbatch(python)
    where = subprocess.run([str(python), "-c", "import cluster; print(cluster.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(tmp_path / "client")), where  # the wheel's copy, not a checkout

    user = tmp_path / "user"
    user.mkdir()
    (user / "my-run.yaml").write_text(yaml.safe_dump({
        "seed": 7, "batch_size": 64, "steps": 4, "checkpoint_every": 2, "log_every": 2,
        "model": {"encoder": "bb_convnet_tiny", "proj_hidden": 64, "proj_dim": 32},
        "data": {"image_size": 16, "train": str(digits_shards["train"])},
        "eval": {"probe": False}, "cluster": {"workers": 2, "cpus_per_worker": 1}}))
    cmd = [str(python.parent / "bigbatch"), "submit", "my-run.yaml", f"cluster.storage_path={tmp_path / 'runs'}",
           "name=from-wheel", "--address", two_node_cluster["dashboard"], "--wait", "--timeout", "500"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=user, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "SUCCEEDED" in out.stdout and "run directory:" in out.stdout
    run_dir = tmp_path / "runs" / "from-wheel"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 7  # the user's file reached the job
    assert json.loads((run_dir / "train_summary.json").read_text())["final"]["step"] == 4


def test_submit_rejects_bad_config_locally(two_node_cluster):
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "loss.name=bogus", "--address",
                          two_node_cluster["dashboard"]], capture_output=True, text=True, env=LOOPBACK_ENV)
    assert out.returncode == 2 and "loss.name" in out.stderr


def test_embedded_run_never_attaches_to_another_ray(two_node_cluster):
    """Without --address a run starts its own Ray, even when RAY_ADDRESS names another one — a dead address, which
    plain ray.init() would try to join and fail, or a live cluster, which it would join and die with."""
    script = ("import ray; from cluster.ray_connect import connect_ray; connect_ray(None);"
              "print(ray.get_runtime_context().gcs_address); ray.shutdown()")
    for other in (f"127.0.0.1:{free_port()}", two_node_cluster["address"]):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={**LOOPBACK_ENV, "RAY_ADDRESS": other}, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        own = out.stdout.strip().splitlines()[-1]
        assert own.startswith("127.0.0.1:") and own != other, (own, other)


def test_probe_runs_as_a_ray_task(two_node_cluster, digits_shards, tmp_path):
    """`--address`: the two workers land on different nodes (one CPU each). The periodic and final probes run as Ray tasks on the cluster (not in the driver) and give exactly the
    figures of the same probe run in this process (the probe is deterministic). The probe data are local paths:
    every node of this one-machine cluster reads them."""
    from eval.run_probe import probe_run

    items = [i for i in _overrides(digits_shards, tmp_path, "probed") if i != "eval.probe=false"]
    cmd = [sys.executable, "-m", "cluster.cli", "pretrain", *items, "eval.probe=true", "eval.every_k_checkpoints=1",
           "--address", two_node_cluster["address"], "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=LOOPBACK_ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "probed"
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["final"]["step"] == 6 and summary["restarts"] == 0
    workers = json.loads((run_dir / "workers.json").read_text())
    assert sorted(workers) == ["0", "1"] and workers["0"]["node_id"] != workers["1"]["node_id"]  # 1 CPU per node
    nodes = {w["node_id"] for w in summary["workers"].values()}
    assert len(nodes) == 2
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    periodic = [m for m in events if m.get("event") == "probe" and "where" in m]
    assert sorted(m["step"] for m in periodic) == [3, 6]
    probe = json.loads((run_dir / "probe.json").read_text())
    for where in [probe["where"], *(m["where"] for m in periodic)]:
        assert where["node_id"] in nodes and where["pid"] != summary["driver"]["pid"] and where["device"] == "cpu"
    here = probe_run(probe["checkpoint"], str(digits_shards["train"]), str(digits_shards["holdout"]), seed=0)
    assert here["checkpoint"] == probe["checkpoint"]
    for key in ("top1", "top5", "knn_top1", "l2"):
        assert here["method"][key] == probe["method"][key], key
