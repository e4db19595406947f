"""GAN: the losses against their formulas in float64, WGAN clipping and schedule, a short digits run whose samples
move towards the data, checkpoint round trip, bf16, and 2-process DDP steps equal to one process."""

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
    pixel_frechet,
    run_gloo,
    small_cfg,
)

from pretrain.generative.gan_losses import clip_weights_, critic_loss, discriminator_loss, generator_loss

LOGITS_REAL = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64)
LOGITS_FAKE = torch.tensor([-2.0, -0.1, 0.3, 1.5, 6.0], dtype=torch.float64)


def _sigmoid(v: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-v))


def test_discriminator_loss_is_negated_log_likelihood():
    dr, df = _sigmoid(LOGITS_REAL), _sigmoid(LOGITS_FAKE)
    expected = -(torch.log(dr).mean() + torch.log(1 - df).mean())
    torch.testing.assert_close(discriminator_loss(LOGITS_REAL, LOGITS_FAKE).double(), expected)
    torch.testing.assert_close(discriminator_loss(torch.zeros(3), torch.zeros(3)), torch.tensor(2 * math.log(2)))


def test_generator_losses_match_their_formulas():
    df = _sigmoid(LOGITS_FAKE)
    torch.testing.assert_close(generator_loss(LOGITS_FAKE, "minimax").double(), torch.log(1 - df).mean())
    torch.testing.assert_close(generator_loss(LOGITS_FAKE, "nonsaturating").double(), -torch.log(df).mean())
    torch.testing.assert_close(generator_loss(LOGITS_FAKE, "wgan").double(), -LOGITS_FAKE.mean())
    torch.testing.assert_close(critic_loss(LOGITS_REAL, LOGITS_FAKE).double(), LOGITS_FAKE.mean() - LOGITS_REAL.mean())
    with pytest.raises(ValueError, match="minimax"):
        generator_loss(LOGITS_FAKE, "hinge")


def test_losses_stay_finite_with_gradients_at_extreme_logits():
    """Where log σ(ℓ) computed naively gives -inf (ℓ = ±200), the softplus forms give exact values and gradients."""
    real = torch.tensor([-200.0, 200.0], dtype=torch.float64, requires_grad=True)
    fake = torch.tensor([200.0, -200.0], dtype=torch.float64, requires_grad=True)
    loss = discriminator_loss(real, fake)
    loss.backward()
    torch.testing.assert_close(loss.detach().double(), torch.tensor(200.0, dtype=torch.float64))
    torch.testing.assert_close(real.grad, torch.tensor([-0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(fake.grad, torch.tensor([0.5, 0.0], dtype=torch.float64))
    fake.grad = None
    generator_loss(fake, "nonsaturating").backward()  # −log σ(−200) ≈ 200: the non-saturating gradient survives
    torch.testing.assert_close(fake.grad, torch.tensor([0.0, -0.5], dtype=torch.float64))
    fake.grad = None
    generator_loss(fake, "minimax").backward()  # log(1 − σ(−200)): saturated, gradient ≈ 0 — the reason for NS
    assert abs(float(fake.grad[1])) < 1e-80


def test_clip_weights_bounds_every_parameter():
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.mul_(100)
    clip_weights_(lin, 0.01)
    assert all(float(p.detach().abs().max()) <= 0.01 for p in lin.parameters())


def _batches(n_steps: int, batch: int = 32, seed: int = 0):
    x = digits_uint8(16)
    g = torch.Generator().manual_seed(seed)
    return [x[torch.randint(0, len(x), (batch,), generator=g)] for _ in range(n_steps)]


def test_wgan_critic_weights_clipped_and_generator_steps_every_n_critic():
    cfg = small_cfg("gan", model={"norm": "none"}, gan={"loss": "wgan", "n_critic": 3, "lr": 1e-3})
    method = build(cfg)
    assert method.optimizers["d"].__class__ is torch.optim.RMSprop and method.optimizers["d"].param_groups[0]["lr"] == 1e-3
    c = cfg.gan.clip
    at_bound = 0
    for s, b in enumerate(_batches(6)):
        g_before = [p.detach().clone() for p in method.generator.parameters()]
        out = method.train_step({"views": b}, s)
        assert set(out) >= {"loss_d", "loss_g", "wasserstein"}
        assert all(float(p.detach().abs().max()) <= c for p in method.discriminator.parameters())
        at_bound += sum(int((p.abs() == c).sum()) for p in method.discriminator.parameters())
        g_changed = any(not torch.equal(a, p) for a, p in zip(g_before, method.generator.parameters(), strict=True))
        assert g_changed == (s % 3 == 2), f"step {s}: generator changed={g_changed}"
    assert at_bound > 0  # the constraint is active, not vacuous


def test_wgan_critic_learns_to_separate_data_from_samples():
    """With G held fixed (n_critic beyond the run), the critic's Wasserstein estimate on held-out data grows."""
    cfg = small_cfg("gan", model={"norm": "none"}, gan={"loss": "wgan", "n_critic": 1000})
    method = build(cfg)
    held = digits_uint8(16)[-256:]
    z = torch.randn(256, cfg.gan.latent_dim, generator=torch.Generator().manual_seed(3))

    def estimate() -> float:
        with torch.no_grad():
            method.eval()
            w = method.discriminator(held.float() / 255).mean() - method.discriminator(method.generator(z)).mean()
            method.train()
        return float(w)

    before = estimate()
    for s, b in enumerate(_batches(40)):
        method.train_step({"views": b}, s)
    after = estimate()
    assert after > 1e-3 and after > 10 * abs(before), (before, after)


STEPS = 50


@pytest.mark.parametrize("loss", ["nonsaturating", "minimax"])
def test_short_digits_run_moves_samples_towards_the_data(loss, tmp_path):
    cfg = small_cfg("gan", gan={"loss": loss, "lr": 5e-4})
    method = build(cfg)
    data = digits_uint8(16)

    def distance() -> float:  # eval-mode G on the same seeded z before and after
        method.eval()
        d = pixel_frechet(method.sample(500, seed=1), data)
        method.train()
        return d

    before = distance()
    logs = [method.train_step({"views": b}, s) for s, b in enumerate(_batches(STEPS))]
    after = distance()
    assert set(logs[-1]) >= {"loss", "loss_d", "loss_g", "d_real", "d_fake"}
    assert logs[-1]["d_real"] > logs[-1]["d_fake"]
    # the saturating minimax loss learns more slowly at the start (the reason non-saturating exists)
    assert after < (0.85 if loss == "nonsaturating" else 0.9) * before, (before, after)
    assert method.represent(data[:6]).shape == (6, method.encoder.num_features)
    paths = method.save_artifacts(tmp_path, STEPS)
    assert [p.name for p in paths] == ["gan-samples-step00000050.png"] and paths[0].stat().st_size > 0


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan"])
def test_state_round_trip_gives_identical_next_step(loss, tmp_path):
    cfg = small_cfg("gan", model={"norm": "group"}, gan={"loss": loss, "n_critic": 2})
    batches = _batches(4)
    a = build(cfg, seed=0)
    for s in range(3):
        a.train_step({"views": batches[s]}, s)
    torch.save(a.state(), tmp_path / "state.pt")
    b = build(cfg, seed=99)
    b.load_state(torch.load(tmp_path / "state.pt", weights_only=True))
    noise = [torch.randn(32, cfg.gan.latent_dim) for _ in range(2)]
    a.sample_noise, b.sample_noise = FixedNoise(noise), FixedNoise(noise)
    assert a.train_step({"views": batches[3]}, 3) == b.train_step({"views": batches[3]}, 3)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k


@pytest.mark.parametrize(("loss", "precision"), [("nonsaturating", "bf16"), ("wgan", "bf16"), ("nonsaturating", "fp16")])
def test_mixed_precision_step(loss, precision):
    """Both networks run under autocast (their convolutions compute in bf16/fp16) and both take real optimiser
    steps (fp16: once GradScaler's scale backed off from overflow); parameters and loss maths stay fp32."""
    method = build(small_cfg("gan", precision=precision, model={"norm": "group"}, gan={"loss": loss, "n_critic": 1}))
    low = torch.bfloat16 if precision == "bf16" else torch.float16
    seen: dict[str, set] = {"d": set(), "g": set()}
    for net, key in ((method.discriminator, "d"), (method.generator, "g")):
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d))
        conv.register_forward_hook(lambda m, i, o, key=key: seen[key].add(o.dtype))
    d0 = [p.detach().clone() for p in method.discriminator.parameters()]
    g0 = [p.detach().clone() for p in method.generator.parameters()]
    moved = lambda before, net: any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))  # noqa: E731
    for step, batch in enumerate(_batches(16)):
        out = method.train_step({"views": batch}, step)
        assert all(math.isfinite(v) for v in out.values())
        if moved(d0, method.discriminator) and moved(g0, method.generator):
            break
    else:
        pytest.fail(f"an optimiser never stepped in 16 train steps: D moved {moved(d0, method.discriminator)}, "
                    f"G moved {moved(g0, method.generator)}")
    assert seen == {"d": {low}, "g": {low}}, seen
    assert all(p.dtype == torch.float32 for p in method.parameters())


# -- data parallel ------------------------------------------------------------------------------------------------
DDP_STEPS = 3


def _ddp_cfg(loss: str):
    return small_cfg("gan", batch_size=32, model={"norm": "group"},
                     gan={"loss": loss, "gen_norm": "group", "n_critic": 2, "lr": 1e-3})


def _ddp_noise():
    g = torch.Generator().manual_seed(7)
    return [torch.randn(32, 64, generator=g) for _ in range(2 * DDP_STEPS)]


def _gan_rank(rank: int, world: int, loss: str, out_dir: str) -> None:
    from pretrain.trainer import ddp_wrapper

    rows = slice(rank * 32 // world, (rank + 1) * 32 // world)
    method = build(_ddp_cfg(loss), seed=rank, wrap=ddp_wrapper(torch.device("cpu")), sgd_lr=0.05)
    method.sample_noise = FixedNoise(_ddp_noise(), rows)
    for s, b in enumerate(_batches(DDP_STEPS, seed=1)):
        method.train_step({"views": b[rows]}, s)
    torch.save(params_and_grads(method), f"{out_dir}/rank{rank}.pt")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("loss", ["nonsaturating", "wgan"])
def test_two_process_ddp_matches_one_process(loss, tmp_path):
    """D and G wrapped separately; D steps every step, G on odd steps: replicas stay identical, and the last
    gradients (D: step 2, G: step 1) and parameters equal one process holding the whole batch."""
    run_gloo(_gan_rank, 2, loss, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = build(_ddp_cfg(loss), seed=0, sgd_lr=0.05)
    single.sample_noise = FixedNoise(_ddp_noise())
    for s, b in enumerate(_batches(DDP_STEPS, seed=1)):
        single.train_step({"views": b}, s)
    ref = params_and_grads(single)
    assert_ddp_matches(r0, r1, ref)
    init = build(_ddp_cfg(loss), seed=0).state_dict()
    assert set(r0["params"]) == set(init) and not any(k.startswith("_") for k in init)
    for part in ("generator.", "discriminator."):
        assert any(not torch.equal(init[k], v) for k, v in r0["params"].items() if k.startswith(part)), part
