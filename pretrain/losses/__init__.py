"""Contrastive losses, each ``loss(z1, z2)`` on this worker's ``[n_local, d]`` projections of two views, or
``loss.stacked(z, num_views)`` on M views stacked view-major (base.py; multi-crop's global + local views).

Each returns this worker's share of the global-batch loss (the mean over workers is the global loss), and,
with DDP averaging, parameter gradients equal those of one process holding the whole batch.

The registry: ``BUILDERS`` turns each loss section of the run config (pretrain/config.py, tagged by
``loss.name``) into its module, so every setting and its default lives in the config; ``VARIANTS`` names the
settings the benchmarks compare, each a loss section written out (``binary-all-pairs`` is binary with
``all_pairs=true``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pretrain.config import LOSSES, BinaryLoss, RankingBlockwiseLoss, RankingLoss, SpectralLoss
from pretrain.losses.base import ContrastiveLoss
from pretrain.losses.binary import BinaryNCE
from pretrain.losses.ranking import RankingNCE
from pretrain.losses.spectral import SpectralContrastive

__all__ = ["BUILDERS", "VARIANTS", "BinaryNCE", "ContrastiveLoss", "RankingNCE", "SpectralContrastive", "build_loss",
           "build_variant", "variant_config"]

LossSection = RankingLoss | RankingBlockwiseLoss | BinaryLoss | SpectralLoss

BUILDERS: dict[str, Callable[[Any], ContrastiveLoss]] = {
    "ranking": lambda c: RankingNCE(c.temperature),
    "ranking-blockwise": lambda c: RankingNCE(c.temperature, block_size=c.block_size),
    "binary": lambda c: BinaryNCE(c.num_negatives or 1, all_pairs=c.all_pairs,  # None with all_pairs
                                  init_logit_scale=c.init_logit_scale, init_bias=c.init_bias),
    "spectral": lambda c: SpectralContrastive(c.mu),
}

VARIANTS: dict[str, dict[str, Any]] = {
    "ranking": {"name": "ranking"},
    "ranking-blockwise": {"name": "ranking-blockwise"},
    "binary-all-pairs": {"name": "binary", "all_pairs": True},
    "binary": {"name": "binary"},
    "spectral": {"name": "spectral"},
}


def build_loss(cfg: LossSection) -> ContrastiveLoss:
    """The loss module of a run config's loss section (ranking | ranking-blockwise | binary | spectral)."""
    if cfg.name not in BUILDERS:
        raise ValueError(f"unknown loss {cfg.name!r} (choose from {', '.join(BUILDERS)})")
    return BUILDERS[cfg.name](cfg)


def variant_config(variant: str, **settings: Any) -> LossSection:
    """The loss section of a named variant with ``settings`` over the config's defaults; a setting the variant's
    section has no key for is left out (one sweep passes the same settings to every variant), None means default."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown loss {variant!r} (choose from {', '.join(VARIANTS)})")
    section = VARIANTS[variant]
    cls = LOSSES[section["name"]]
    given = {k: v for k, v in settings.items() if k in cls.model_fields and v is not None}
    return cls(**{**section, **given})


def build_variant(variant: str, **settings: Any) -> ContrastiveLoss:
    """``build_loss(variant_config(variant, **settings))``."""
    return build_loss(variant_config(variant, **settings))
