"""SimCLR: encoder f → projection head g → contrastive loss between the views of each image (two, or multi-crop's
two global and L local views).

The loss module sits inside the data-parallel wrapper with the networks, so learnable loss parameters
(the binary loss's temperature and bias) are averaged by DDP like every other gradient, and the
losses' own cross-worker gathers see the same autocast/precision context as the forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pretrain.config import RunConfig
from pretrain.encoders import ProjectionHead, create_encoder
from pretrain.losses import ContrastiveLoss, build_loss
from pretrain.methods.base import PretrainMethod
from pretrain.precision import autocast_context
from pretrain.preprocess import Normalize


class SimCLRNet(nn.Module):
    """Stacked uint8 views → scalar loss: normalise, encode, project, contrast (``loss.stacked``)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, loss: ContrastiveLoss) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.encoder = encoder
        self.projector = projector
        self.loss = loss

    def forward(self, views: torch.Tensor, n: int, local_views: torch.Tensor | None = None) -> torch.Tensor:
        """``views`` ``[V·n, C, S, S]`` and multi-crop's ``local_views`` ``[L·n, C, s, s]``, each view-major: one
        encoder pass per resolution (its BN sees all views of that size), one projector pass over the pooled
        features of all V + L views, then their loss."""
        h = self.encoder(self.normalize(views))
        if local_views is not None:
            h = torch.cat([h, self.encoder(self.normalize(local_views))])
        z = self.projector(h)
        return self.loss.stacked(z.float(), z.shape[0] // n)


class SimCLR(PretrainMethod):
    num_views = 2

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        m = cfg.model
        encoder = create_encoder(m.encoder, small_stem=m.small_stem, norm=m.norm)
        projector = ProjectionHead(encoder.num_features, m.proj_hidden, m.proj_dim, m.proj_layers,
                                   norm="batch" if m.norm == "batch" else "group")
        self.net = SimCLRNet(encoder, projector, build_loss(cfg.loss))

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        views = batch["views"]
        self.zero_grad_all()
        with autocast_context(self.cfg.precision, self.device):
            loss = self._train_net(views, views.shape[0] // self.num_views, batch.get("local_views"))
        self.step_all(loss)
        return {"loss": loss.detach(), "lr": self.optimizers["main"].param_groups[0]["lr"]}

    @torch.no_grad()
    def represent(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.encoder(self.net.normalize(images))
