"""End to end under Ray Train: VAE and GAN on the digits with 2 workers through the shared trainer, launch and
run directory; each run completes and improves its objective."""

from __future__ import annotations

import json

import pytest
import torch
from generative_utils import digits_uint8, pixel_frechet

from pretrain.config import RunConfig

pytestmark = pytest.mark.slow


def _run(tmp_path, method: str, steps: int, **sections):
    from cluster.launch import run_pretrain

    tree = {"name": f"{method}-e2e", "method": method, "batch_size": 64, "steps": steps, "log_every": 5,
            "checkpoint_every": steps // 2, "data": {"train": "digits", "image_size": 16},
            "model": {"encoder": "bb_convnet_tiny"},
            "cluster": {"workers": 2, "cpus_per_worker": 1, "storage_path": str(tmp_path), "max_failures": 0},
            "eval": {"probe": False}, **sections}
    cfg = RunConfig.model_validate(tree)
    run_dir = run_pretrain(cfg, show_progress=False, probe=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in lines if "step" in m and "event" not in m]
    assert metrics and metrics[-1]["step"] == steps
    return cfg, run_dir, metrics


def _artifacts(run_dir, kinds: list[str], steps: int) -> None:
    """Every checkpoint's PNGs (written with it, collected into run_dir/artifacts before Ray prunes it) are images."""
    from PIL import Image

    expected = {f"{kind}-step{s:08d}.png" for kind in kinds for s in (steps // 2, steps)}
    assert {p.name for p in (run_dir / "artifacts").glob("*.png")} == expected
    for name in expected:
        with Image.open(run_dir / "artifacts" / name) as img:
            assert img.format == "PNG" and min(img.size) >= 16 * 8


@pytest.mark.timeout(600)
def test_vae_under_ray_two_workers_improves_the_elbo(tmp_path, ray_local):
    _, run_dir, metrics = _run(tmp_path, "vae", 40, optim={"lr": 2e-3, "weight_decay": 0.0, "warmup_fraction": 0.0},
                               vae={"decoder_width": 32})
    first, last = metrics[0], metrics[-1]
    assert {"loss", "recon", "kl", "elbo"} <= set(last)
    assert last["elbo"] > first["elbo"] + 0.3 * abs(first["elbo"]), (first, last)
    _artifacts(run_dir, ["vae-recon", "vae-samples"], 40)


@pytest.mark.timeout(600)
def test_gan_under_ray_two_workers_moves_samples_towards_the_data(tmp_path, ray_local):
    from pretrain.checkpoint import load_method
    from pretrain.methods import build_method

    cfg, run_dir, metrics = _run(tmp_path, "gan", 60, gan={"loss": "nonsaturating", "lr": 5e-4, "gen_width": 32})
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= set(metrics[-1])
    assert metrics[-1]["loss_d"] < metrics[0]["loss_d"]  # the discriminator's objective improves
    torch.manual_seed(cfg.seed * 1000)  # rank 0's initialisation in the trainer (DDP broadcasts it)
    init = build_method(cfg).eval()
    trained, _ = load_method(run_dir)
    data = digits_uint8(16)
    before, after = pixel_frechet(init.sample(500, seed=1), data), pixel_frechet(trained.sample(500, seed=1), data)
    assert after < 0.9 * before, (before, after)
    _artifacts(run_dir, ["gan-samples"], 60)
