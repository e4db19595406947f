"""GAN pretraining (Goodfellow et al.; WGAN: Arjovsky et al.): a DCGAN-style generator and a discriminator made of
the shared timm encoder plus a linear head, whose encoder features are the representation.

One train step = one discriminator (critic) step on the batch, then — on every ``n_critic``-th step
(``step % n_critic == n_critic − 1``) — one generator step on fresh noise. n_critic = 1 (minimax, non-saturating)
alternates D and G every step; WGAN's default 5 gives the paper's 5 critic iterations, each on a fresh real
batch, per generator iteration. The schedule depends only on ``step``, so every rank takes the same steps.

Data parallelism: D and G are wrapped separately. In the D step G runs unwrapped under ``no_grad`` (no DDP
forward whose reducer would wait for gradients); in the G step D runs unwrapped with ``requires_grad`` off, so
only G's reducer expects (and all-reduces) gradients. WGAN clips every critic parameter to [−c, c] after each
critic step; the clipped weights are identical on all ranks because the updates are.

WGAN and normalisation: a BatchNorm critic scores a sample relative to its batch, which is not the 1-Lipschitz
function of x the WGAN argument needs; use ``model.norm=none`` or ``group`` (per-sample) for the critic — the
``wgan-*`` presets do. With ``model.norm=batch`` the method still runs (as the original WGAN code did) but warns.
Optimisers: Adam(lr 2e-4, β = (0.5, 0.999)) for minimax/non-saturating, RMSprop(lr 5e-5) for WGAN; constant lr.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipeline.pixels import to_unit_range
from pretrain.config import RunConfig
from pretrain.encoders import create_encoder
from pretrain.generative.gan_losses import clip_weights_, critic_loss, discriminator_loss, generator_loss
from pretrain.generative.images import save_grid
from pretrain.generative.networks import ConvDecoder
from pretrain.methods.base import PretrainMethod
from pretrain.precision import autocast_context
from pretrain.preprocess import Normalize


class Discriminator(nn.Module):
    """Images in [0, 1] → one logit (or critic score) per image, fp32: normalise → timm encoder → linear head."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, 1)

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalize.float_input(x01))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x01)).float().squeeze(1)


class Generator(nn.Module):
    """z ``[B, latent_dim]`` → images in [0, 1] ``[B, 3, size, size]`` (sigmoid of the conv decoder's output)."""

    def __init__(self, latent_dim: int, image_size: int, width: int, norm: str) -> None:
        super().__init__()
        self.net = ConvDecoder(latent_dim, image_size, width, norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))


class GAN(PretrainMethod):
    num_views = 1
    augment = False  # model the images as they are: the stream's SimCLR views off
    wrapped = {"_d_train": "discriminator", "_g_train": "generator"}  # wrapped separately (module docstring)

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        g, m = cfg.gan, cfg.model
        self.kind = g.loss
        self.n_critic = g.n_critic or (5 if g.loss == "wgan" else 1)
        if g.loss == "wgan" and m.norm == "batch":
            warnings.warn("gan.loss=wgan with model.norm=batch: a BatchNorm critic is batch-dependent, not a "
                          "Lipschitz function of x; prefer model.norm=none or group", stacklevel=2)
        self.discriminator = Discriminator(create_encoder(m.encoder, small_stem=m.small_stem, norm=m.norm))
        self.generator = Generator(g.latent_dim, cfg.data.image_size, g.gen_width, g.gen_norm)
        if self.kind == "wgan":
            clip_weights_(self.discriminator, g.clip)

    @property
    def encoder(self) -> nn.Module:
        return self.discriminator.encoder

    @property
    def lr(self) -> float:
        return self.cfg.gan.lr or (5e-5 if self.kind == "wgan" else 2e-4)

    def build_optimizers(self, total_steps: int) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
        """RMSprop for WGAN, Adam(β = (0.5, 0.999)) otherwise, one each for D and G; constant lr (no schedulers)."""
        if self.kind == "wgan":
            make = lambda params: torch.optim.RMSprop(params, lr=self.lr)  # noqa: E731
        else:
            make = lambda params: torch.optim.Adam(params, lr=self.lr, betas=(0.5, 0.999))  # noqa: E731
        return {"d": make(self.discriminator.parameters()), "g": make(self.generator.parameters())}, {}

    def sample_noise(self, n: int) -> torch.Tensor:
        """z ~ N(0, I) ``[n, latent_dim]`` on the device (tests override this to feed fixed noise)."""
        return torch.randn(n, self.cfg.gan.latent_dim, device=self.device)

    def is_generator_step(self, step: int) -> bool:
        return step % self.n_critic == self.n_critic - 1

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        real = to_unit_range(batch["views"])
        n = real.shape[0]
        amp = lambda: autocast_context(self.cfg.precision, self.device)  # noqa: E731
        # Discriminator / critic step: G's samples are constants here.
        opt_d = self.optimizers["d"]
        opt_d.zero_grad(set_to_none=True)
        with torch.no_grad(), amp():
            fake = self.generator(self.sample_noise(n)).float()
        with amp():
            real_out, fake_out = self._d_train(real), self._d_train(fake)
        loss_d = critic_loss(real_out, fake_out) if self.kind == "wgan" else discriminator_loss(real_out, fake_out)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(opt_d)
        if self.kind == "wgan":
            clip_weights_(self.discriminator, self.cfg.gan.clip)
        metrics = self._d_metrics(real_out.detach(), fake_out.detach(), loss_d.detach())
        if self.is_generator_step(step):
            metrics["loss_g"] = self._generator_step(n, amp)
        self.scaler.update()
        return metrics

    def _generator_step(self, n: int, amp) -> torch.Tensor:
        opt_g = self.optimizers["g"]
        opt_g.zero_grad(set_to_none=True)
        self.discriminator.requires_grad_(False)
        try:
            with amp():
                loss_g = generator_loss(self.discriminator(self._g_train(self.sample_noise(n))), self.kind)
            self.scaler.scale(loss_g).backward()
            self.scaler.step(opt_g)
        finally:
            self.discriminator.requires_grad_(True)
        return loss_g.detach()

    def _d_metrics(self, real_out: torch.Tensor, fake_out: torch.Tensor, loss_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """Device tensors, read at log steps; ``loss_g`` is the generator's loss on this D step's samples unless G
        stepped."""
        m = {"loss": loss_d, "loss_d": loss_d, "loss_g": generator_loss(fake_out, self.kind)}
        if self.kind == "wgan":
            m["wasserstein"] = real_out.mean() - fake_out.mean()
        else:
            m["d_real"] = torch.sigmoid(real_out).mean()
            m["d_fake"] = torch.sigmoid(fake_out).mean()
        return m

    @torch.no_grad()
    def represent(self, images: torch.Tensor) -> torch.Tensor:
        return self.discriminator.features(to_unit_range(images)).float()

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """G(z) for z ~ N(0, I) from a generator seeded by ``seed`` → ``[n, 3, H, W]`` in [0, 1]."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.cfg.gan.latent_dim, generator=gen).to(self.device)
        return self.generator(z).float()

    def save_artifacts(self, out_dir: Path, step: int) -> list[Path]:
        """``gan-samples-step*.png``: 64 samples from the same seeded z at every checkpoint (eval-mode G)."""
        was_training = self.training
        self.eval()
        try:
            return [save_grid(self.sample(64, seed=self.cfg.seed), Path(out_dir) / f"gan-samples-step{step:08d}.png")]
        finally:
            self.train(was_training)
