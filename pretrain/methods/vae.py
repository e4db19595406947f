"""VAE pretraining (Kingma & Welling): the shared timm encoder → (μ, log σ²) of q(z|x); z = μ + σ⊙ε; a conv
decoder → p(x|z), Gaussian (fixed or learned shared σ) or Bernoulli. Loss per image = recon + β·KL, where
recon = −log p(x|z) (one sample of z) and KL is closed-form; with β = 1 the loss is −ELBO (nats per image).

Optimiser: the ``optim`` section (``optim.name`` AdamW by default for the VAE — LARS's layer-wise trust ratio is a
large-batch contrastive recipe; a VAE's decoder and its likelihood scale train reliably with Adam), with lr, weight
decay and warmup + cosine. Representation: μ (``vae.representation=mu``) or the encoder's pooled features.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipeline.pixels import to_unit_range
from pretrain.config import RunConfig
from pretrain.encoders import create_encoder
from pretrain.generative.images import save_grid
from pretrain.generative.networks import ConvDecoder
from pretrain.generative.vae_math import (
    LOGVAR_RANGE,
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    kl_standard_normal,
    reparameterize,
)
from pretrain.methods.base import PretrainMethod
from pretrain.precision import autocast_context
from pretrain.preprocess import Normalize


class VAENet(nn.Module):
    """(images in [0, 1], ε) → per-image (recon = −log p(x|z), KL), both ``[B]`` fp32. The module DDP wraps."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        m, v = cfg.model, cfg.vae
        self.likelihood = v.likelihood
        self.normalize = Normalize()
        self.encoder = create_encoder(m.encoder, small_stem=m.small_stem, norm=m.norm)
        self.to_latent = nn.Linear(self.encoder.num_features, 2 * v.latent_dim)
        self.decoder = ConvDecoder(v.latent_dim, cfg.data.image_size, v.decoder_width, v.decoder_norm)
        self.learn_sigma = v.learn_sigma and v.likelihood == "gaussian"  # σ is unused (no grad) for Bernoulli
        if self.learn_sigma:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(v.sigma)))
        else:
            self.register_buffer("log_sigma", torch.tensor(math.log(v.sigma)), persistent=False)

    def posterior(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z|x), fp32, log σ² clamped to LOGVAR_RANGE."""
        mu, logvar = self.to_latent(self.encoder(self.normalize.float_input(x01))).float().chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] in [0, 1]: sigmoid of the decoder's output (the Gaussian mean, or the Bernoulli probability)."""
        return torch.sigmoid(self.decoder(z).float())

    def forward(self, x01: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.posterior(x01)
        z = reparameterize(mu, logvar, eps.float())
        out = self.decoder(z).float()
        if self.likelihood == "bernoulli":
            log_px = bernoulli_log_likelihood(x01, out)
        else:
            log_px = gaussian_log_likelihood(x01, torch.sigmoid(out), self.log_sigma.float())
        return -log_px, kl_standard_normal(mu, logvar)


class VAE(PretrainMethod):
    num_views = 1
    augment = False  # model the images as they are: the stream's SimCLR views off
    optimizer_name = "vae"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.net = VAENet(cfg)
        self._last_images: torch.Tensor | None = None

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def sample_noise(self, n: int, dim: int) -> torch.Tensor:
        """ε ~ N(0, I) ``[n, dim]`` on the device (tests override this to feed fixed noise)."""
        return torch.randn(n, dim, device=self.device)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        x01 = to_unit_range(batch["views"])
        self._last_images = x01[:32].detach()
        self.zero_grad_all()
        eps = self.sample_noise(x01.shape[0], self.cfg.vae.latent_dim)
        with autocast_context(self.cfg.precision, self.device):
            recon, kl = self._train_net(x01, eps)
        recon, kl = recon.mean(), kl.mean()
        loss = recon + self.cfg.vae.beta * kl
        self.step_all(loss)
        out = {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach(), "elbo": -(recon + kl).detach(),
               "lr": self.optimizers["vae"].param_groups[0]["lr"]}
        if self.net.learn_sigma:
            out["sigma"] = self.net.log_sigma.detach().exp()
        return out

    @torch.no_grad()
    def represent(self, images: torch.Tensor) -> torch.Tensor:
        x01 = to_unit_range(images)
        if self.cfg.vae.representation == "features":
            return self.net.encoder(self.net.normalize.float_input(x01)).float()
        return self.net.posterior(x01)[0]

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """E[x|z=μ(x)] for images (uint8 or [0, 1]) → ``[n, C, H, W]`` in [0, 1]."""
        return self.net.decode_mean(self.net.posterior(to_unit_range(images))[0])

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """E[x|z] for z ~ N(0, I) drawn from a generator seeded by ``seed`` → ``[n, C, H, W]`` in [0, 1]."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.cfg.vae.latent_dim, generator=gen).to(self.device)
        return self.net.decode_mean(z)

    def save_artifacts(self, out_dir: Path, step: int) -> list[Path]:
        """``vae-recon-step*.png`` (rows of originals above their reconstructions) and ``vae-samples-step*.png``."""
        was_training = self.training
        self.eval()
        try:
            paths = [save_grid(self.sample(64, seed=self.cfg.seed), Path(out_dir) / f"vae-samples-step{step:08d}.png")]
            if self._last_images is not None:
                x = self._last_images[:32]
                rows = [t for i in range(0, x.shape[0], 8) for t in (x[i:i + 8], self.reconstruct(x[i:i + 8]))]
                paths.append(save_grid(torch.cat(rows), Path(out_dir) / f"vae-recon-step{step:08d}.png", nrow=8))
        finally:
            self.train(was_training)
        return paths
