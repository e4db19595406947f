"""The contract every pretraining method (SimCLR, VAE, GAN) meets, so one trainer runs them all.

A method owns its networks, losses, optimisers and schedulers. The trainer (pretrain/train_loop.py):
  1. builds it with ``build_method(cfg)``, moves it to the device;
  2. calls ``configure(total_steps, device, wrap)`` where ``wrap(module) -> module`` wraps a network for
     data parallelism (DDP, or identity in one process); the method keeps unwrapped references for
     ``state_dict`` so checkpoints never carry ``module.`` prefixes;
  3. calls ``train_step(batch, step)`` per batch; the method does zero_grad/forward/backward/optimiser and
     scheduler steps itself (a GAN alternates several) and returns what to log: detached 0-d tensors on the
     device (or plain numbers), which the trainer reads only at log steps — no host-device sync per step;
  4. saves ``state()`` / restores ``load_state()`` in checkpoints;
  5. evaluates ``represent(images)`` — the frozen features the probe uses.

``batch`` is a dict from the data stream: ``"views"`` (one uint8 ``[V·n, C, H, W]`` tensor of the n images' V =
``num_views`` views, view-major, already on the device), with multi-crop ``"local_views"`` (uint8 ``[L·n, C, h, w]``),
``"label"`` and ``"key"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

Wrap = Callable[[nn.Module], nn.Module]


class PretrainMethod(nn.Module):
    """Base class; subclasses set ``num_views`` and implement the abstract methods."""

    num_views: ClassVar[int] = 2

    def __init__(self) -> None:
        super().__init__()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        """Where the method's parameters are: follows ``.to()``, so a loaded method samples on its own device."""
        return next(self.parameters()).device

    # -- lifecycle ---------------------------------------------------------------------------
    def configure(self, total_steps: int, device: torch.device, wrap: Wrap) -> None:
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError

    @torch.no_grad()
    def represent(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen representation ``[n, D]`` for the probe (eval mode is the caller's job)."""
        raise NotImplementedError

    @property
    def encoder(self) -> nn.Module:
        """The backbone whose features are the representation (timm model, forward -> pooled features)."""
        raise NotImplementedError

    def save_artifacts(self, out_dir: Path, step: int) -> list[Path]:
        """Optional PNGs (reconstructions, samples) written to ``out_dir``; returns the paths."""
        return []

    # -- checkpoint state ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
