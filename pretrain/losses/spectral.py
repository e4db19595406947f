"""Spectral contrastive loss (HaoChen et al., 2021) in O(N·d²), with one all-reduce across workers.

With z = f(x), w = f(x⁺) (projections, not normalised), for two views:
    L(Z, W) = −(2/N) Σ_i z_iᵀw_i + μ/(N(N−1)) Σ_{i≠j} (z_iᵀw_j)²,
    Σ_{i≠j} (z_iᵀw_j)² = ⟨ZᵀZ, WᵀW⟩_F − Σ_i (z_iᵀw_i)².
M views Z_1 … Z_M (multi-crop): the mean over ordered pairs of distinct views, L = (1/(M(M−1))) Σ_{a≠c} L(Z_a, Z_c)
(L is symmetric, so M = 2 is L(Z_1, Z_2)). Each worker sums Z_aᵀZ_a (d×d, per view), Σ_{a≠c} Σ_i z^aᵀz^c and
Σ_{a≠c} Σ_i (z^aᵀz^c)² over its rows; one all-reduce (with gradient: the backward sums over workers too) gives the
global sums, every worker returns the global L, and DDP's gradient average is the single-process gradient.
Communication: M·d² + 2 floats per step, independent of the batch.
"""

from __future__ import annotations

import torch

from pretrain.config import SpectralLoss
from pretrain.losses.base import ContrastiveLoss
from pretrain.losses.distributed import all_reduce_with_grad, world


class SpectralContrastive(ContrastiveLoss):
    def __init__(self, mu: float = SpectralLoss.model_fields["mu"].default) -> None:
        super().__init__()
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        self.mu = mu

    def _stacked(self, z: torch.Tensor, num_views: int) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            n, d = z.shape[0] // num_views, z.shape[1]
            views = z.float().view(num_views, n, d).unbind(0)
            s1, s2 = z.new_zeros((), dtype=torch.float32), z.new_zeros((), dtype=torch.float32)
            for a in range(num_views):
                for c in range(a + 1, num_views):  # (a, c) and (c, a): one dot product, counted twice
                    diag = (views[a] * views[c]).sum(1)
                    s1, s2 = s1 + 2 * diag.sum(), s2 + 2 * (diag ** 2).sum()
            packed = torch.cat([*[(v.T @ v).reshape(-1) for v in views], s1[None], s2[None]])
            packed = all_reduce_with_grad(packed)
            grams = packed[: num_views * d * d].view(num_views, d * d)
            s1, s2 = packed[-2], packed[-1]
            n_global = n * world()[1]
            if n_global < 2:
                raise ValueError("spectral contrastive loss needs a global batch of at least 2 images")
            cross = sum(2 * (grams[a] * grams[c]).sum() for a in range(num_views) for c in range(a + 1, num_views))
            pairs = num_views * (num_views - 1)
            return (-2.0 * s1 / n_global + self.mu * (cross - s2) / (n_global * (n_global - 1))) / pairs

    def extra_repr(self) -> str:
        return f"mu={self.mu}"
