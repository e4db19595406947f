"""Contrastive losses, each ``loss(z1, z2)`` on this worker's ``[n_local, d]`` projections of two views, or
``loss.stacked(z, num_views)`` on M views stacked view-major (base.py; multi-crop's global + local views).

Each returns this worker's share of the global-batch loss (the mean over workers is the global loss), and,
with DDP averaging, parameter gradients equal those of one process holding the whole batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain.losses.base import ContrastiveLoss
from pretrain.losses.binary import BinaryNCE
from pretrain.losses.ranking import RankingNCE
from pretrain.losses.spectral import SpectralContrastive

if TYPE_CHECKING:
    from pretrain.config import BinaryLoss, RankingBlockwiseLoss, RankingLoss, SpectralLoss

__all__ = ["BinaryNCE", "ContrastiveLoss", "RankingNCE", "SpectralContrastive", "build_loss"]


def build_loss(cfg: RankingLoss | RankingBlockwiseLoss | BinaryLoss | SpectralLoss) -> ContrastiveLoss:
    """ranking | ranking-blockwise | binary | spectral, from the run config's loss section."""
    if cfg.name == "ranking":
        return RankingNCE(cfg.temperature)
    if cfg.name == "ranking-blockwise":
        return RankingNCE(cfg.temperature, block_size=cfg.block_size)
    if cfg.name == "binary":
        return BinaryNCE(cfg.num_negatives or 1, all_pairs=cfg.all_pairs)  # None with all_pairs
    if cfg.name == "spectral":
        return SpectralContrastive(cfg.mu)
    raise ValueError(f"unknown loss {cfg.name!r}")
