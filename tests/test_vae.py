"""VAE: closed-form KL and reparameterised gradients against Monte Carlo, likelihoods against torch.distributions,
a short digits run that improves the ELBO, checkpoint round trip, bf16, and a 2-process DDP step."""

from __future__ import annotations

import math

import pytest
import torch
from generative_utils import (
    FixedNoise,
    assert_ddp_matches,
    build,
    digits_uint8,
    params_and_grads,
    run_gloo,
    small_cfg,
)

from pretrain.generative.networks import ConvDecoder, upsampling_plan
from pretrain.generative.vae_math import (
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    kl_standard_normal,
    reparameterize,
)


def test_kl_matches_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(400_000, 3, 4, generator=g, dtype=torch.float64)
    z = reparameterize(mu, logvar, eps)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(0.0, 1.0)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    closed = kl_standard_normal(mu, logvar)
    assert closed.shape == (3,)
    torch.testing.assert_close(closed, torch.distributions.kl_divergence(q, p).sum(-1))
    assert torch.all((mc - closed).abs() < 0.02 + 0.01 * closed), (mc, closed)
    assert torch.all(kl_standard_normal(torch.zeros(2, 5), torch.zeros(2, 5)) == 0)


def test_reparameterised_gradient_matches_analytic():
    """E_q[z²] = μ² + σ²: the pathwise gradient through z = μ + e^{logvar/2} ε is (2μ, σ²) in (μ, logvar)."""
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([0.7, -1.3, 0.0], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([0.4, -0.9, 1.2], dtype=torch.float64, requires_grad=True)
    eps = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    reparameterize(mu, logvar, eps).pow(2).mean(0).sum().backward()
    torch.testing.assert_close(mu.grad, 2 * mu.detach(), atol=0.02, rtol=0.0)
    torch.testing.assert_close(logvar.grad, logvar.detach().exp(), atol=0.03, rtol=0.0)


def test_reparameterised_kl_gradient_matches_closed_form_gradient():
    g = torch.Generator().manual_seed(2)
    mu = torch.tensor([[0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([[-0.5, 0.8]], dtype=torch.float64, requires_grad=True)
    eps = torch.randn(200_000, 1, 2, generator=g, dtype=torch.float64)
    z = reparameterize(mu, logvar, eps)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1).mean().backward()
    mc = (mu.grad.clone(), logvar.grad.clone())
    mu.grad, logvar.grad = None, None
    kl_standard_normal(mu, logvar).sum().backward()
    torch.testing.assert_close(mc[0], mu.grad, atol=0.02, rtol=0.0)
    torch.testing.assert_close(mc[1], logvar.grad, atol=0.02, rtol=0.0)


def test_likelihoods_match_torch_distributions():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64)
    mean = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64)
    for log_sigma in (math.log(0.1), 0.3):
        ref = torch.distributions.Normal(mean, math.exp(log_sigma)).log_prob(x).flatten(1).sum(1)
        torch.testing.assert_close(gaussian_log_likelihood(x, mean, torch.tensor(log_sigma, dtype=torch.float64)), ref)
    xb = (x > 0.5).double()
    logits = torch.tensor([-200.0, -3.0, 0.0, 3.0, 200.0], dtype=torch.float64).repeat(4, 3, 5, 1)
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(xb).flatten(1).sum(1)
    out = bernoulli_log_likelihood(xb, logits)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)


def test_learned_sigma_gradient_is_zero_at_the_optimum():
    """d/dlogσ of Σ log N(x; m, σ²) vanishes at σ² = mean squared error (the σ-VAE closed form)."""
    g = torch.Generator().manual_seed(4)
    x, m = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    log_sigma = (0.5 * (x - m).pow(2).mean().log()).clone().requires_grad_(True)
    gaussian_log_likelihood(x, m, log_sigma).sum().backward()
    assert abs(float(log_sigma.grad)) < 1e-9


@pytest.mark.parametrize("size", [8, 15, 16, 28, 32, 64, 96])
def test_decoder_output_is_image_sized(size):
    start, k = upsampling_plan(size)
    assert start * 2**k >= size and (size < 8 or 4 <= start <= 8)
    dec = ConvDecoder(8, size, width=8, norm="group")
    assert dec(torch.randn(2, 8)).shape == (2, 3, size, size)


def _heldout_elbo(method, x, noise):
    """Mean ELBO over a fixed batch with fixed ε, in eval mode."""
    method.eval()
    with torch.no_grad():
        recon, kl = method.net(x.float() / 255, noise)
    method.train()
    return float(-(recon + kl).mean())


def test_short_digits_run_improves_the_elbo(tmp_path):
    x = digits_uint8(16)
    cfg = small_cfg("vae", optim={"lr": 2e-3, "weight_decay": 0.0, "warmup_fraction": 0.0})
    method = build(cfg, total_steps=60)
    held, train = x[:256], x[256:]
    noise = torch.randn(256, cfg.vae.latent_dim, generator=torch.Generator().manual_seed(9))
    before = _heldout_elbo(method, held, noise)
    g = torch.Generator().manual_seed(0)
    logs = [method.train_step({"views": train[torch.randint(0, len(train), (32,), generator=g)]}, s)
            for s in range(60)]
    after = _heldout_elbo(method, held, noise)
    assert set(logs[-1]) >= {"loss", "recon", "kl", "elbo"}
    assert all(math.isclose(m["loss"], -m["elbo"], rel_tol=1e-5) for m in logs)  # beta = 1: loss = -ELBO
    assert after > before + 0.5 * abs(before), (before, after)
    assert method.represent(held[:10]).shape == (10, cfg.vae.latent_dim)
    paths = method.save_artifacts(tmp_path, 60)
    assert sorted(p.name for p in paths) == ["vae-recon-step00000060.png", "vae-samples-step00000060.png"]
    from PIL import Image
    assert Image.open(paths[0]).size == (8 * 17 + 1, 8 * 17 + 1)  # 64 samples of 16 px, 1-px padding


def test_features_representation_and_bernoulli_likelihood():
    cfg = small_cfg("vae", vae={"representation": "features", "likelihood": "bernoulli", "learn_sigma": True})
    method = build(cfg)
    out = method.train_step({"views": digits_uint8(16)[:32]}, 0)
    assert math.isfinite(out["loss"]) and out["kl"] >= 0
    # σ means nothing to a Bernoulli likelihood: no parameter without gradient (DDP would wait for it forever)
    assert "sigma" not in out and all(p.grad is not None for p in method.parameters())
    assert method.represent(digits_uint8(16)[:5]).shape == (5, method.encoder.num_features)


def _step_both(a, b, batch, noise):
    a.sample_noise, b.sample_noise = FixedNoise([noise]), FixedNoise([noise])
    return a.train_step({"views": batch}, 3), b.train_step({"views": batch}, 3)


def test_state_round_trip_gives_identical_next_step(tmp_path):
    cfg = small_cfg("vae", vae={"learn_sigma": True})
    x = digits_uint8(16)
    a = build(cfg, total_steps=10, seed=0)
    for s in range(3):
        a.train_step({"views": x[32 * s:32 * (s + 1)]}, s)
    torch.save(a.state(), tmp_path / "state.pt")
    b = build(cfg, total_steps=10, seed=123)  # different init: everything must come from the state
    b.load_state(torch.load(tmp_path / "state.pt", weights_only=True))
    ma, mb = _step_both(a, b, x[96:128], torch.randn(32, cfg.vae.latent_dim))
    assert ma == mb
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    assert "sigma" in ma and ma["sigma"] != cfg.vae.sigma


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_keep_fp32_parameters_and_loss_math(precision):
    """fp16: scaled gradients of a per-image log-likelihood (a sum over pixels) overflow at GradScaler's initial
    2^16, so the first steps are skipped while the scale backs off; then the parameters move."""
    method = build(small_cfg("vae", precision=precision))
    before = [p.detach().clone() for p in method.parameters()]
    for step in range(16):
        out = method.train_step({"views": digits_uint8(16)[:32]}, step)
        assert all(math.isfinite(v) for v in out.values())
        if any(not torch.equal(a, p) for a, p in zip(before, method.parameters(), strict=True)):
            break
    else:
        pytest.fail("no optimiser step was taken in 16 train steps")
    assert all(p.dtype == torch.float32 for p in method.parameters())
    assert bool(method.state()["scaler"]) == (precision == "fp16")  # the GradScaler's state is checkpointed


# -- data parallel ------------------------------------------------------------------------------------------------
DDP_STEPS = 2


def _ddp_cfg():
    return small_cfg("vae", batch_size=32, model={"norm": "group"}, vae={"decoder_norm": "group", "learn_sigma": True},
                     optim={"lr": 1e-3, "warmup_fraction": 0.0})


def _ddp_inputs():
    g = torch.Generator().manual_seed(5)
    x = digits_uint8(16)
    batches = [x[torch.randint(0, len(x), (32,), generator=g)] for _ in range(DDP_STEPS)]
    noises = [torch.randn(32, 64, generator=g) for _ in range(DDP_STEPS)]
    return batches, noises


def _vae_rank(rank: int, world: int, out_dir: str) -> None:
    from pretrain.trainer import ddp_wrapper

    batches, noises = _ddp_inputs()
    rows = slice(rank * 32 // world, (rank + 1) * 32 // world)
    method = build(_ddp_cfg(), total_steps=10, seed=rank, wrap=ddp_wrapper(torch.device("cpu")), sgd_lr=1e-4)
    method.sample_noise = FixedNoise(noises, rows)
    for s, b in enumerate(batches):
        method.train_step({"views": b[rows]}, s)
    torch.save(params_and_grads(method), f"{out_dir}/rank{rank}.pt")


@pytest.mark.timeout(180)
def test_two_process_ddp_matches_one_process(tmp_path):
    run_gloo(_vae_rank, 2, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = build(_ddp_cfg(), total_steps=10, seed=0, sgd_lr=1e-4)
    batches, noises = _ddp_inputs()
    single.sample_noise = FixedNoise(noises)
    for s, b in enumerate(batches):
        single.train_step({"views": b}, s)
    assert_ddp_matches(r0, r1, params_and_grads(single))
    init = build(_ddp_cfg(), total_steps=10, seed=0).state_dict()
    assert set(r0["params"]) == set(init) and not any(k.startswith("_") for k in init)
    assert any(not torch.equal(init[k], v) for k, v in r0["params"].items())
