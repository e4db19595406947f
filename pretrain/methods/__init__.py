"""Pretraining methods: SimCLR (contrastive), VAE, GAN — one interface (base.PretrainMethod), one trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pretrain.config import RunConfig
    from pretrain.methods.base import PretrainMethod


def build_method(cfg: RunConfig) -> PretrainMethod:
    """The method named by ``cfg.method``, built from the config (encoders via pretrain.encoders)."""
    if cfg.method == "simclr":
        from pretrain.methods.simclr import SimCLR
        return SimCLR(cfg)
    if cfg.method == "vae":
        from pretrain.methods.vae import VAE
        return VAE(cfg)
    if cfg.method == "gan":
        from pretrain.methods.gan import GAN
        return GAN(cfg)
    raise ValueError(f"unknown method {cfg.method!r}")
