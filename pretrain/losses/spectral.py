"""Spectral contrastive loss (HaoChen et al., 2021) in O(N·d²), with one all-reduce across workers.

With z = f(x), w = f(x⁺) (projections, not normalised):
    L = −(2/N) Σ_i z_iᵀw_i + μ/(N(N−1)) Σ_{i≠j} (z_iᵀw_j)²,
    Σ_{i≠j} (z_iᵀw_j)² = ⟨ZᵀZ, WᵀW⟩_F − Σ_i (z_iᵀw_i)².
Each worker sums ZᵀZ, WᵀW (d×d), Σ z_iᵀw_i and Σ (z_iᵀw_i)² over its rows; one all-reduce (with gradient: the
backward sums over workers too) gives the global sums, every worker returns the global L, and DDP's gradient
average is the single-process gradient. Communication: 2d² + 2 floats per step, independent of the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.config import SpectralLoss
from pretrain.losses.distributed import all_reduce_with_grad, world


class SpectralContrastive(nn.Module):
    def __init__(self, mu: float = SpectralLoss.model_fields["mu"].default) -> None:
        super().__init__()
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        self.mu = mu

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must both be [n, d]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z, w = z1.float(), z2.float()
            d = z.shape[1]
            diag = (z * w).sum(1)
            packed = torch.cat([(z.T @ z).reshape(-1), (w.T @ w).reshape(-1), diag.sum()[None], (diag ** 2).sum()[None]])
            packed = all_reduce_with_grad(packed)
            zz, ww = packed[: d * d], packed[d * d: 2 * d * d]
            s1, s2 = packed[-2], packed[-1]
            n_global = z.shape[0] * world()[1]
            if n_global < 2:
                raise ValueError("spectral contrastive loss needs a global batch of at least 2 images")
            off_diagonal = (zz * ww).sum() - s2
            return -2.0 * s1 / n_global + self.mu * off_diagonal / (n_global * (n_global - 1))

    def extra_repr(self) -> str:
        return f"mu={self.mu}"
