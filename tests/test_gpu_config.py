"""GPU settings in the run config: whole GPUs per worker, the GPU preset is a GPU preset, and data.train has no
silent default outside the digits presets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from cluster.run_config import PRESET_DIR, ConfigError, load_run_config


@pytest.mark.parametrize("gpus", ["0.5", "0.25", "2", "4"])
def test_gpus_per_worker_is_0_or_1(gpus):
    with pytest.raises(ConfigError) as exc:
        load_run_config(None, [f"cluster.gpus_per_worker={gpus}"])
    msg = str(exc.value)
    assert "cluster.gpus_per_worker: must be 0 (CPU workers) or 1 (one GPU per worker)" in msg
    assert "use more workers (cluster.workers=N)" in msg and f"(got {yaml.safe_load(gpus)})" in msg


@pytest.mark.parametrize("gpus", ["0", "1", "1.0"])
def test_whole_gpus_are_accepted(gpus):
    assert load_run_config(None, [f"cluster.gpus_per_worker={gpus}"]).cluster.gpus_per_worker == float(gpus)


def test_cifar10_simclr_is_a_gpu_preset():
    cfg = load_run_config("cifar10-simclr", ["data.train=/data/cifar10"])
    c = cfg.cluster
    assert (c.gpus_per_worker, cfg.precision, cfg.model.sync_batchnorm) == (1, "bf16", True)
    assert c.workers >= 2 and cfg.batch_size % c.workers == 0
    # 2–3 loader cores per GPU at 32 px (≈ 11,800 pairs/s per GPU against 6,251 pairs/s per loader core), plus one
    # core for the training process
    assert 2 <= cfg.data.loader_workers <= 3 and c.cpus_per_worker >= cfg.data.loader_workers + 1


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_data_train_is_required_unless_the_preset_is_about_the_digits(preset):
    tree = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    if (tree.get("data") or {}).get("train") == "digits":
        assert load_run_config(preset).data.train == "digits"
        return
    with pytest.raises(ConfigError, match=r"data\.train is required: give data\.train=SHARDS"):
        load_run_config(preset)
    assert load_run_config(preset, ["data.train=/data/x"]).data.train == "/data/x"


def test_a_config_file_without_data_train_is_an_error_not_the_digits(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("method: simclr\nbatch_size: 64\n")
    with pytest.raises(ConfigError, match="data.train is required"):
        load_run_config(str(path))


def test_cli_pretrain_without_data_is_exit_2_and_names_the_key(tmp_path):
    env = {**os.environ, "BIGBATCH_RUNS": str(tmp_path)}  # should the check regress, the run lands in tmp_path
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "pretrain", "cifar10-simclr"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert "data.train is required: give data.train=SHARDS" in out.stderr and "Traceback" not in out.stderr
