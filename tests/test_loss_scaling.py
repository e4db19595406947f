"""The loss-scaling benchmark's mechanics (not its speed): slopes, byte counts, skips, and one real tiny sweep."""

import json
import subprocess
import sys

import pytest

from eval.loss_scaling import Config, bytes_sent, estimated_bytes, loglog_slope, measure


def test_loglog_slope_recovers_power_laws():
    assert loglog_slope([(b, 3 * b ** 2) for b in (10, 100, 1000)]) == pytest.approx(2.0)
    assert loglog_slope([(b, 0.5 * b) for b in (4, 8, 1 << 20)], lo=8) == pytest.approx(1.0)
    assert loglog_slope([(8, 1.0)]) is None


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
