"""SimCLR: encoder f → projection head g → contrastive loss between the two views of each image.

The loss module sits inside the data-parallel wrapper with the networks, so learnable loss parameters
(the binary loss's temperature and bias) are averaged by DDP like every other gradient, and the
losses' own cross-worker gathers see the same autocast/precision context as the forward.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from pretrain.config import RunConfig
from pretrain.encoders import ProjectionHead, create_encoder
from pretrain.methods.base import PretrainMethod, Wrap
from pretrain.optim import WarmupCosine, build_optimizer
from pretrain.preprocess import Normalize


class SimCLRNet(nn.Module):
    """(views₁, views₂) uint8 → scalar loss: normalise, encode, project, contrast."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.encoder = encoder
        self.projector = projector
        self.loss = loss

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        n = x1.shape[0]
        h = self.encoder(self.normalize(torch.cat([x1, x2])))  # one pass: BN sees both views
        z = self.projector(h)
        return self.loss(z[:n].float(), z[n:].float())


def autocast_context(precision: str, device: torch.device):
    """bf16/fp16 autocast on the device's type; fp32 → no autocast. Loss maths stays fp32 inside the losses."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class SimCLR(PretrainMethod):
    num_views = 2

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        from pretrain.losses import build_loss

        self.cfg = cfg
        m = cfg.model
        encoder = create_encoder(m.encoder, small_stem=m.small_stem, norm=m.norm)
        projector = ProjectionHead(encoder.num_features, m.proj_hidden, m.proj_dim, m.proj_layers,
                                   norm="batch" if m.norm == "batch" else "group")
        self.net = SimCLRNet(encoder, projector, build_loss(cfg.loss))
        self._train_net: nn.Module = self.net
        self._device = torch.device("cpu")
        self._scaler: torch.amp.GradScaler | None = None

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def configure(self, total_steps: int, device: torch.device, wrap: Wrap) -> None:
        self._device = device
        opt = build_optimizer(self.net, self.cfg.optim, self.cfg.batch_size)
        self.optimizers = {"main": opt}
        self.schedulers = {"main": WarmupCosine(opt, total_steps, self.cfg.optim.warmup_fraction,
                                                self.cfg.optim.min_lr_ratio)}
        if self.cfg.precision == "fp16":
            self._scaler = torch.amp.GradScaler(device.type)
        object.__setattr__(self, "_train_net", wrap(self.net))  # not registered: state_dict stays unprefixed

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        x1, x2 = batch["views"]
        opt = self.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        with autocast_context(self.cfg.precision, self._device):
            loss = self._train_net(x1, x2)
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
            self._scaler.step(opt)
            self._scaler.update()
        else:
            loss.backward()
            opt.step()
        self.schedulers["main"].step()
        return {"loss": float(loss.detach()), "lr": opt.param_groups[0]["lr"]}

    @torch.no_grad()
    def represent(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images
        return self.net.encoder(self.net.normalize.float_input(x))
