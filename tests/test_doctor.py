"""`bigbatch doctor`: every check passes on this CPU machine (gloo, CPU kernels), its verdicts are not vacuous, the
input-rate arithmetic, GPU facts as reported, and the Ray-cluster path (checks in a Ray task)."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from types import SimpleNamespace

import pytest
import torch

import cluster.doctor as doctor
from cluster.commands.doctor import run, summary_lines

ALL = {"ray", "ddp ranking", "ddp ranking-blockwise", "ddp binary-all-pairs", "ddp binary", "ddp spectral", "syncbn",
       "precision", "checkpoint", "stream"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_doctor_on_this_machine_all_checks_ok():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "doctor"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["ok"] is True and {c["name"] for c in report["checks"]} == ALL
    assert all(c["ok"] for c in report["checks"]), [c for c in report["checks"] if not c["ok"]]
    for c in report["checks"]:  # one line per check, the JSON's verdict
        assert any(line.startswith(f"ok    {c['name']} ") for line in lines), c["name"]
    assert lines[-2] == f"all {len(ALL)} checks ok"
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["cpu_cores"] >= 1 and env["gpus"] == []
    assert report["ray"]["address"] == "embedded" and report["ray"]["cpus"] >= 1
    by = {c["name"]: c["data"] for c in report["checks"]}
    assert by["ddp ranking"]["backend"] == "gloo" and by["ddp ranking"]["grad_diff"] < 1e-4
    assert by["checkpoint"]["max_weight_diff"] == 0.0 and by["checkpoint"]["loss"] == by["checkpoint"]["restored_loss"]
    assert by["precision"]["precision"] == "bf16" and by["stream"]["stream_pairs_per_s_per_core"] > 0


def test_a_failing_check_is_a_fail_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "check_syncbn", lambda device: doctor.Check("syncbn", False, "outputs differ by 0.3"))
    assert run(Namespace(address=None, check=["syncbn"], json=False)) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert "FAIL  syncbn  outputs differ by 0.3" in lines and lines[-2] == "1 of 1 checks FAILED"
    assert json.loads(lines[-1])["ok"] is False


def test_a_check_that_raises_is_reported_not_a_traceback(monkeypatch, capsys):
    def broken(device):
        raise RuntimeError("NCCL error: unhandled system error")

    monkeypatch.setattr(doctor, "check_checkpoint", broken)
    assert run(Namespace(address=None, check=["checkpoint"], json=True)) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # --json: the JSON line only
    (check,) = json.loads(out[0])["checks"]
    assert check == {"name": "checkpoint", "ok": False, "detail": "RuntimeError: NCCL error: unhandled system error",
                     "data": {}}


def test_unknown_check_is_exit_2(capsys):
    assert run(Namespace(address=None, check=["gpu"], json=False)) == 2
    assert "unknown check 'gpu' (choose from ray, ddp" in capsys.readouterr().err


def test_input_rate_arithmetic(monkeypatch):
    """Loader cores per GPU = GPU pairs/s ÷ stream pairs/s per core, against the cores per GPU beside training."""
    monkeypatch.setattr(doctor, "stream_pairs_per_core", lambda: 5000.0)
    gpu_node = {"gpus": [{"index": 0}], "cores_per_gpu": 4.0}
    ok = doctor.check_stream(gpu_node, 12_000.0)
    assert ok.ok and ok.data["loader_cores_per_gpu"] == 2.4 and "data.loader_workers=3" in ok.detail
    starved = doctor.check_stream({**gpu_node, "cores_per_gpu": 2.0}, 12_000.0)
    assert not starved.ok and "cannot keep up" in starved.detail
    assert not doctor.check_stream(gpu_node, None).ok  # a GPU whose rate is unknown is not a pass
    cpu = doctor.check_stream({"gpus": [], "cores_per_gpu": None}, None)
    assert cpu.ok and cpu.data["reference_loader_cores_per_gpu"] == round(doctor.REFERENCE_GPU_PAIRS_PER_S / 5000, 2)


def test_gpu_facts_and_their_lines(monkeypatch):
    props = {0: SimpleNamespace(name="NVIDIA A100-SXM4-80GB", total_memory=80 * 2**30, major=8, minor=0),
             1: SimpleNamespace(name="Tesla V100-SXM2-16GB", total_memory=16 * 2**30, major=7, minor=0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", props.__getitem__)
    env = doctor.environment()
    assert [(g["name"], g["bf16"], g["capability"]) for g in env["gpus"]] == [
        ("NVIDIA A100-SXM4-80GB", True, "8.0"), ("Tesla V100-SXM2-16GB", False, "7.0")]
    assert env["cores_per_gpu"] == round(env["cpu_cores"] / 2, 1)
    lines = summary_lines({"environment": env, "ray": None, "checks": []})
    assert "  gpu 1: Tesla V100-SXM2-16GB, 16.0 GiB, compute capability 7.0, no native bf16: use precision=fp16" in lines


@pytest.mark.slow
def test_cluster_path_runs_the_checks_in_a_ray_task(ray_local):
    report = doctor.run_doctor("auto", ["ray", "syncbn"])  # Ray is up (the fixture): the task runs on its node
    assert report["ok"], report["checks"]
    assert [c["name"] for c in report["checks"]] == ["ray", "syncbn"]
    assert "the checks ran on a node whose torch sees 0 GPU(s)" in report["checks"][0]["detail"]
    assert ray_local.is_initialized()  # a cluster the doctor did not start is left running
