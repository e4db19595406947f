"""The VAE's probabilistic maths in fp32, per image (summed over latent dimensions / pixels).

q(z|x) = N(μ, diag σ²) with log σ² = ``logvar``; p(z) = N(0, I).
    KL(q ‖ p) = ½ Σⱼ (μⱼ² + σⱼ² − 1 − log σⱼ²)
    z = μ + σ ⊙ ε, ε ~ N(0, I)                  (reparameterisation: ∂z/∂μ = 1, ∂z/∂σ = ε)
    Gaussian:  log p(x|z) = Σ_pixels [−½ log(2π σ_x²) − (x − m)² / (2 σ_x²)]
    Bernoulli: log p(x|z) = Σ_pixels [x log σ(ℓ) + (1 − x) log σ(−ℓ)] = −Σ softplus(−ℓ)·x − softplus(ℓ)·(1 − x)
The Bernoulli form accepts x ∈ [0, 1] (the usual cross-entropy objective for grey levels; a proper
log-likelihood only for binary x).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOGVAR_RANGE = (-30.0, 20.0)  # σ² ∈ [1e-13, 5e8]: exp() stays finite in fp32


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^logvar) ‖ N(0, I)) per row: ½ Σⱼ (μⱼ² + e^logvarⱼ − 1 − logvarⱼ) → ``[B]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = μ + e^{½ logvar} ⊙ ε: a sample of q(z|x) that is differentiable in μ and logvar."""
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor | float) -> torch.Tensor:
    """Σ over all but the first dim of log N(x; mean, σ²) with one shared σ = e^log_sigma → ``[B]``."""
    log_sigma = torch.as_tensor(log_sigma, dtype=mean.dtype, device=mean.device)
    per_pixel = -0.5 * math.log(2 * math.pi) - log_sigma - 0.5 * (x - mean).pow(2) * torch.exp(-2.0 * log_sigma)
    return per_pixel.flatten(1).sum(dim=1)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ over all but the first dim of x log σ(ℓ) + (1 − x) log σ(−ℓ), computed as −BCE-with-logits → ``[B]``."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)
