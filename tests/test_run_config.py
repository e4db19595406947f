"""Run configs: presets validate; unknown keys and bad values fail before anything starts, naming the key."""

import subprocess
import sys
import time

import pytest

from cluster.run_config import PRESET_DIR, ConfigError, load_run_config


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_validates(preset):
    text = (PRESET_DIR / f"{preset}.yaml").read_text()
    cfg = load_run_config(preset, [] if "train: digits" in text else ["data.train=/data/shards"])
    assert cfg.batch_size % cfg.cluster.workers == 0


def test_default_is_the_default_preset():
    cfg = load_run_config(None)
    assert (cfg.method, cfg.loss.name, cfg.data.train, cfg.cluster.workers) == ("simclr", "ranking", "digits", 2)


def test_overrides_parse_as_yaml():
    cfg = load_run_config("spectral", ["batch_size=64", "loss.mu=0.5", "eval.baselines=[pixels, pca]", "name=x"])
    assert (cfg.batch_size, cfg.loss.mu, cfg.eval.baselines, cfg.name) == (64, 0.5, ["pixels", "pca"], "x")


@pytest.mark.parametrize("override, fragment", [
    ("loss.temprature=0.1", "loss.temprature: unknown key"),
    ("optim.name=sgd", "optim.name"),
    ("batch_size=-4", "batch_size"),
    ("batch_size=255", "divisible by cluster.workers"),
    ("loss", "expected KEY=VALUE"),
    ("batch_size.x=1", "is a value, not a section"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as exc:
        load_run_config(None, [override])
    assert fragment in str(exc.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*cifar10-simclr"):
        load_run_config("no-such-preset")


def test_cli_fails_fast_before_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: simclr\nmodel: {encoder: resnet18, widht: 3}\n")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "pretrain", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "model.widht: unknown key" in out.stderr and str(bad) in out.stderr
    assert time.time() - t0 < 30
