"""An elastic run on a two-node loopback Ray cluster: cluster.workers=[1, 3] starts on both nodes, the node holding
two of its workers is killed mid-run (its raylet, by PID), the run continues on the one worker left from its last
checkpoint and finishes; the node comes back (and the group may grow again). The global batches and the losses are
those of an uninterrupted fixed-world-size run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import LOOPBACK_ENV

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]

STEPS, EVERY = 24, 4

CLUSTER = r"""
import json, os, signal, sys
from ray.cluster_utils import Cluster
# dead nodes noticed within ~2 s
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
            "include_dashboard": False, "_system_config": {"health_check_period_ms": 500,
            "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}})
node = c.add_node(num_cpus=2, node_ip_address="127.0.0.1")
c.wait_for_nodes()
print(json.dumps({"address": c.address}), flush=True)
for line in sys.stdin:
    if line.strip() == "kill":             # the added node's raylet, by its PID; its workers die with it
        os.kill(node.all_processes["raylet"][0].process.pid, signal.SIGKILL)
        c.remove_node(node, allow_graceful=False)
        print("killed", flush=True)
    elif line.strip() == "add":
        node = c.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        print("added", flush=True)
c.shutdown()
"""


def _items(digits_shards, storage: Path) -> list[str]:
    return ["model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "model.norm=group",
            "data.image_size=16", f"data.train={digits_shards['train']}", f"data.probe_test={digits_shards['holdout']}",
            "data.lanes=6", "data.loader_workers=0", "batch_size=48", f"steps={STEPS}", f"checkpoint_every={EVERY}",
            "log_every=1", "log_batch_keys=true", "deterministic=true", "optim.name=adamw", "optim.lr=0.001",
            "optim.warmup_fraction=0", "cluster.workers=[1, 3]", "cluster.cpus_per_worker=1",
            "cluster.resize_interval_s=5", "cluster.max_failures=3", "eval.knn=false",
            f"cluster.storage_path={storage}", "name=elastic"]


def _reference(digits_shards, tmp_path) -> dict[int, tuple[float, str]]:
    """The uninterrupted run with one worker, in this process."""
    from cluster.run_config import load_run_config
    from pretrain.trainer import LocalHooks, Trainer

    items = [i for i in _items(digits_shards, tmp_path) if not i.startswith("cluster.workers")]
    cfg = load_run_config(None, [*items, "cluster.workers=1"])
    hooks = LocalHooks(tmp_path / "reference")
    hooks.checkpoint = lambda write, metrics: None
    Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=hooks).fit()
    return {m["step"]: (m["loss"], m["batch_keys"][-1]) for m in hooks.logs}


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _committed_step(run_dir: Path) -> int:
    """The step of the newest checkpoint Ray Train has registered (what a restarted group resumes from)."""
    path = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(path.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0
    return int(latest.get("metrics", {}).get("step", 0))


def test_lose_a_node_continue_on_fewer_workers_same_batches_same_losses(digits_shards, tmp_path):
    t0 = time.time()
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=LOOPBACK_ENV)
    run = None
    try:
        address = json.loads(cluster.stdout.readline())["address"]
        # a group start that cannot be placed (Ray still counts the dead node's CPUs) gives up after 20 s, not 60
        env = {**LOOPBACK_ENV, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}
        log = open(tmp_path / "driver.log", "w")  # noqa: SIM115
        run = subprocess.Popen([sys.executable, "-m", "cluster.cli", "pretrain", *_items(digits_shards, tmp_path),
                                "--address", address, "--no-progress"], stdout=log, stderr=subprocess.STDOUT,
                               env=env)
        reference = _reference(digits_shards, tmp_path)
        run_dir = tmp_path / "elastic"
        killed = added = False
        while run.poll() is None and time.time() - t0 < 400:
            recs = _records(run_dir)
            groups = [r["world_size"] for r in recs if r.get("event") == "workers"]
            step = max((r["step"] for r in recs if "loss" in r), default=0)
            if not killed and groups[-1:] == [3] and step >= EVERY + 2 and _committed_step(run_dir) >= EVERY:
                cluster.stdin.write("kill\n")
                cluster.stdin.flush()
                assert cluster.stdout.readline().strip() == "killed"
                killed = time.time()
            elif killed and not added and groups and groups[-1] < 3:
                cluster.stdin.write("add\n")
                cluster.stdin.flush()
                assert cluster.stdout.readline().strip() == "added"
                added = time.time()
            time.sleep(0.5)
        run.wait(timeout=60)
        ended = time.time()
        assert run.returncode == 0, (tmp_path / "driver.log").read_text()[-4000:]
    finally:
        if run is not None and run.poll() is None:
            run.kill()  # our own child, by PID
        cluster.stdin.close()
        try:
            cluster.wait(60)
        except subprocess.TimeoutExpired:
            cluster.kill()  # our own child, by PID
    assert killed and added
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["final"]["step"] == STEPS
    shrink = summary["resizes"][0]
    assert shrink["old_world_size"] == 3 and shrink["new_world_size"] == 1 and "fewer" in shrink["why"]
    assert shrink["step"] % EVERY == 0 and 0 < shrink["step"] < STEPS
    # every step, as logged by its last attempt: the uninterrupted run's global batch and loss
    logged: dict[int, tuple[float, str]] = {}
    for r in _records(run_dir):
        if "loss" in r:
            logged[r["step"]] = (r["loss"], r["batch_keys"][-1])
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, (loss, keys) in logged.items():
        assert keys == reference[step][1], step
        assert loss == pytest.approx(reference[step][0], rel=2e-5, abs=1e-5), step
    assert json.loads((run_dir / "probe.json").read_text())["step"] == STEPS
    print(f"elastic kill-and-resume test: {time.time() - t0:.0f} s (killed at {killed - t0:.0f} s, added at "
          f"{added - t0:.0f} s, driver ended at {ended - t0:.0f} s); resizes {summary['resizes']}")
