"""Classical baselines through the same probe: raw pixels, PCA, probabilistic PCA, a randomly initialised encoder.

PPCA (Tipping & Bishop, closed-form maximum likelihood), with λ_1 ≥ … ≥ λ_D the eigenvalues of the sample
covariance and U_M the top-M eigenvectors:
    σ² = mean(λ_{M+1..D}),   W = U_M (Λ_M − σ²I)^{1/2},   E[z | x] = (WᵀW + σ²I)⁻¹ Wᵀ (x − μ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.pixels import to_unit_range
from pretrain.encoders import create_encoder
from pretrain.preprocess import Normalize


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 3, H, W] → float [n, 3·H·W] in [0, 1]."""
    return to_unit_range(images).flatten(1)


@dataclass
class PCA:
    mean: np.ndarray
    components: np.ndarray     # [D, M], orthonormal columns (top-M eigenvectors)
    eigenvalues: np.ndarray    # all D eigenvalues of the sample covariance, descending

    @classmethod
    def fit(cls, x: np.ndarray, m: int) -> PCA:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        eig = s ** 2 / x.shape[0]                       # ML covariance (divide by n)
        d = x.shape[1]
        eig = np.concatenate([eig, np.zeros(max(0, d - eig.shape[0]))])
        if not 0 < m < d:
            raise ValueError(f"PCA/PPCA needs 0 < M < D = {d}, got M = {m}")
        return cls(mean, vt[:m].T, eig)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components


@dataclass
class PPCA:
    mean: np.ndarray
    weight: np.ndarray         # W [D, M]
    noise_variance: float      # σ²

    @classmethod
    def fit(cls, x: np.ndarray, m: int) -> PPCA:
        pca = PCA.fit(x, m)
        sigma2 = float(pca.eigenvalues[m:].mean())
        scale = np.sqrt(np.maximum(pca.eigenvalues[:m] - sigma2, 0.0))
        return cls(pca.mean, pca.components * scale, sigma2)

    def posterior_mean(self, x: np.ndarray) -> np.ndarray:
        """E[z | x] = (WᵀW + σ²I)⁻¹ Wᵀ (x − μ), one row per sample."""
        w = self.weight
        m_matrix = w.T @ w + self.noise_variance * np.eye(w.shape[1])
        return np.linalg.solve(m_matrix, w.T @ (np.asarray(x, dtype=np.float64) - self.mean).T).T


def random_encoder(name: str, small_stem: bool = True, norm: str = "batch", seed: int = 0) -> torch.nn.Module:
    """A randomly initialised encoder of the given architecture (seeded), in eval mode, fed like trained ones."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(Normalize(), create_encoder(name, small_stem=small_stem, norm=norm)).eval()
