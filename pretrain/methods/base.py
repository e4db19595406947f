"""The contract every pretraining method (SimCLR, VAE, GAN) meets, so one trainer runs them all, and the plumbing
they share, so a method is its networks and its maths.

The trainer (pretrain/trainer.py; pretrain/train_loop.py runs it in a Ray Train worker):
  1. builds the method with ``build_method(cfg)``, moves it to the device;
  2. calls ``configure(total_steps, device, wrap)``: the base builds the optimisers and schedulers
     (``build_optimizers``), the loss scaler ``self.scaler`` (a ``torch.amp.GradScaler``, enabled for fp16 only)
     and, for each ``attribute: network`` of ``wrapped``, sets ``self.<attribute> = wrap(self.<network>)``
     (DDP, or identity in one process) unregistered, so ``state_dict`` holds each network once, unprefixed;
     before ``configure`` the attribute is the network itself;
  3. calls ``train_step(batch, step)`` per batch; the method does zero_grad/forward/backward/optimiser and
     scheduler steps itself (a GAN alternates several) and returns what to log: detached 0-d tensors on the
     device (or plain numbers), which the trainer reads only at log steps — no host-device sync per step;
  4. saves ``state()`` / restores ``load_state()`` in checkpoints (networks, optimisers, schedulers, scaler);
  5. evaluates ``represent(images)`` — the frozen features the probe uses.

``batch`` is a dict from the data stream: ``"views"`` (one uint8 ``[V·n, C, H, W]`` tensor of the n images' V =
``num_views`` views, view-major, already on the device), with multi-crop ``"local_views"`` (uint8 ``[L·n, C, h, w]``),
``"label"`` and ``"key"``. ``augment``: the stream's augmented views (SimCLR), or the images as they are (a
method that models them: VAE, GAN).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pretrain.config import RunConfig
from pretrain.optim import WarmupCosine, build_optimizer, build_scalar_optimizer

Wrap = Callable[[nn.Module], nn.Module]


class PretrainMethod(nn.Module):
    """Base class; subclasses build their networks in ``__init__`` and implement ``train_step``, ``represent`` and
    ``encoder`` (and ``build_optimizers`` unless the default fits)."""

    num_views: ClassVar[int] = 2
    augment: ClassVar[bool] = True
    wrapped: ClassVar[dict[str, str]] = {"_train_net": "net"}  # attribute → the network it wraps for training
    optimizer_name: ClassVar[str] = "main"                     # the default optimiser's key in checkpoints

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)

    def __getattr__(self, name: str) -> Any:
        if name in type(self).wrapped:  # not configured yet: the network itself
            return super().__getattr__(type(self).wrapped[name])
        return super().__getattr__(name)

    @property
    def device(self) -> torch.device:
        """Where the method's parameters are: follows ``.to()``, so a loaded method samples on its own device."""
        return next(self.parameters()).device

    # -- lifecycle ---------------------------------------------------------------------------
    def configure(self, total_steps: int, device: torch.device, wrap: Wrap) -> None:
        """Optimisers and schedulers, the loss scaler (fp16: scaled losses), and the wrapped training networks."""
        self.optimizers, self.schedulers = self.build_optimizers(total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.cfg.precision == "fp16")
        for attribute, network in self.wrapped.items():
            object.__setattr__(self, attribute, wrap(getattr(self, network)))

    def build_optimizers(self, total_steps: int) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
        """(optimisers, schedulers) by name. Default: the ``optim`` section's optimiser over ``self.net``, named
        ``optimizer_name``, and Adam over its 0-d parameters (``optimizer_name``_scalars) if any; each with warmup +
        cosine."""
        o = self.cfg.optim
        optimizers = {self.optimizer_name: build_optimizer(self.net, o, self.cfg.batch_size)}
        scalars = build_scalar_optimizer(self.net, o)
        if scalars is not None:
            optimizers[f"{self.optimizer_name}_scalars"] = scalars
        return optimizers, {k: WarmupCosine(opt, total_steps, o.warmup_fraction, o.min_lr_ratio)
                            for k, opt in optimizers.items()}

    def zero_grad_all(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step_all(self, loss: torch.Tensor) -> None:
        """Backward of the (fp16: scaled) ``loss``, a step of every optimiser, the scaler's update, every schedule."""
        self.scaler.scale(loss).backward()
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        for sched in self.schedulers.values():
            sched.step()

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
            "scaler": self.scaler.state_dict(),  # {} unless fp16
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
