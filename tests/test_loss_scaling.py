"""The loss-scaling benchmark's mechanics (not its speed): slopes, byte counts, skips, and one real tiny sweep."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from cluster.bench.loss_scaling import (
    LOSSES,
    Config,
    backend,
    build,
    bytes_sent,
    estimated_bytes,
    loglog_slope,
    measure,
    memory_budget,
    rank_device,
)
from cluster.bench.loss_scaling_report import row, summary


def test_loglog_slope_recovers_power_laws():
    assert loglog_slope([(b, 3 * b ** 2) for b in (10, 100, 1000)]) == pytest.approx(2.0)
    assert loglog_slope([(b, 0.5 * b) for b in (4, 8, 1 << 20)], lo=8) == pytest.approx(1.0)
    assert loglog_slope([(8, 1.0)]) is None


def test_the_losses_come_from_the_registry_with_the_run_configs_defaults():
    from pretrain.config import RankingBlockwiseLoss
    from pretrain.losses import VARIANTS

    assert tuple(VARIANTS) == LOSSES
    blockwise = build(Config("ranking-blockwise", 64))
    default = RankingBlockwiseLoss(name="ranking-blockwise")
    assert (blockwise.temperature, blockwise.block_size) == (default.temperature, default.block_size)
    assert build(Config("ranking-blockwise", 64, block_size=32)).block_size == 32
    assert build(Config("binary", 64, num_negatives=3)).num_negatives == 3
    assert build(Config("binary-all-pairs", 64)).all_pairs


def test_bytes_sent_by_collective():
    assert bytes_sent(Config("ranking", 1024, dim=128, world_size=1)) == 0
    gather = 1 / 2 * 2048 * 128 * 4  # each of 2 workers sends half of the [2B, d] gathered views
    assert bytes_sent(Config("ranking", 1024, dim=128, world_size=2)) == int(3 * gather)
    # spectral: independent of B
    assert bytes_sent(Config("spectral", 1024, world_size=4)) == bytes_sent(Config("spectral", 1 << 20, world_size=4))
    assert bytes_sent(Config("binary", 1 << 20, world_size=8)) == 0


def test_impossible_configuration_is_skipped_not_run():
    r = measure(Config("ranking", 1 << 20), memory_limit=1 << 30)
    assert r.skipped and "GiB" in r.skipped and r.time_s is None
    assert estimated_bytes(Config("ranking-blockwise", 1 << 16)) < 1 << 30


def test_cli_tiny_sweep(tmp_path):
    png = tmp_path / "scaling.png"
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "bench", "losses", "--batch-sizes", "64", "256",
                          "--losses", "ranking", "ranking-blockwise", "spectral", "--dim", "16", "--block-size", "32",
                          "--repeats", "1", "--plot", str(png)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary["slopes_4096_to_1M"]) == {"ranking", "ranking-blockwise", "spectral"}
    assert any(line.startswith("ranking-blockwise") and "256" in line for line in lines)
    assert png.stat().st_size > 5000


def test_a_failing_configuration_is_reported_as_failed_not_skipped():
    # num_negatives=8 needs a local batch > 8: the subprocess raises, and its error is the result
    r = measure(Config("binary", 8, dim=8, num_negatives=8, repeats=1))
    assert r.skipped is None and r.time_s is None
    assert r.error.startswith("rank 0: ValueError: binary NCE: num_negatives=8 needs a local batch > 8"), r.error
    assert "FAILED: rank 0: ValueError" in row(r)
    out = summary([r], dim=8, world_size=1)
    assert out["failed"] == [{"loss": "binary", "batch": 8, "error": r.error}]
    assert out["results"][0]["error"] == r.error and out["results"][0]["skipped"] is None


def test_on_gpus_the_skip_decision_reads_gpu_memory(monkeypatch):
    """One rank per GPU: each rank's estimate against the smallest GPU (not all ranks against host RAM)."""
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=(2 + i) * gib))
    cfg = Config("ranking", 4096, dim=128, world_size=2, device="cuda")
    assert memory_budget(cfg) == (estimated_bytes(cfg), int(0.9 * 2 * gib), "GPU memory")
    cpu = Config("ranking", 4096, dim=128, world_size=2)
    assert memory_budget(cpu)[0] == 2 * estimated_bytes(cpu) and memory_budget(cpu)[2] == "host memory"
    big = Config("ranking", 1 << 15, world_size=2, device="cuda")  # ~10 GiB per rank: more than a 2 GiB GPU holds
    r = measure(big)
    assert r.skipped and "GiB of GPU memory" in r.skipped and r.error is None


def test_rank_device_and_backend_follow_the_device_flag(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert rank_device(Config("ranking", 64, world_size=2, device="cuda"), 1) == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]  # the rank's own GPU is the current one before NCCL starts
    assert backend(Config("ranking", 64, device="cuda")) == "nccl"
    assert rank_device(Config("ranking", 64, world_size=2), 1) == torch.device("cpu") and len(current) == 1
    assert backend(Config("ranking", 64)) == "gloo"


def test_the_floor_is_timed_on_the_loss_device(monkeypatch):
    import cluster.bench.loss_scaling as ls

    seen = []
    monkeypatch.setattr(ls, "_floor", lambda cfg, views, device: seen.append(device) or 1.0)
    out = ls.run_rank(Config("ranking", 64, dim=8, repeats=1))
    assert seen == [torch.device("cpu")] and out["floor_s"] == 1.0


def test_device_flag_is_checked_before_anything_runs(monkeypatch):
    from cluster.bench.losses_command import device_problem

    assert device_problem("cpu", 4) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA GPU is visible" in device_problem("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_problem("cuda", 2) is None
    assert "needs one GPU per rank, 2 visible" in device_problem("cuda", 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPUs")
def test_cli_device_cuda_without_gpus_is_exit_2():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "bench", "losses", "--device", "cuda"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "bigbatch bench losses: --device cuda: no CUDA GPU is visible" in out.stderr


def test_cli_reports_failures_in_the_table_and_json_and_exits_1():
    # B=2 over 2 gloo ranks is one image per rank: the O(B) binary loss needs more rows than negatives
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "bench", "losses", "--batch-sizes", "2", "--losses",
                          "binary", "--world-size", "2", "--dim", "8", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("binary") and "FAILED: rank" in line and "needs a local batch > 1" in line
               for line in lines), lines
    summary_line = json.loads(lines[-1])
    assert summary_line["device"] == "cpu" and summary_line["failed"][0]["batch"] == 2
