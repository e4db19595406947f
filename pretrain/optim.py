"""Large-batch optimisation: LARS (timm) or AdamW, lr = lr_at_256·B/256 or ·√(B/256); warmup + cosine (timm).

Weight decay — and, for LARS, the trust-ratio adaptation — skip norms and biases (1-D parameters): timm's
Lars adapts only groups with weight_decay > 0, which gives exactly SimCLR's exclusion. Scalar (0-d) parameters —
an objective's own constants, like binary NCE's log-scale and bias or a VAE's log σ — are not the network's: Adam
trains them at ``optim.scalar_lr`` (SigLIP's way) on the same warmup + cosine, with no decay, whatever the network's
optimiser. Under LARS's raw rate a log-scale whose gradient carries the factor t = e^t' and the k negatives runs off
to −∞ in a few dozen steps; an SGD rate small enough at one (B, k) is too large at another, Adam's step is not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from timm.optim import Lars, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from pretrain.config import OptimConfig


def base_lr(cfg: OptimConfig, global_batch: int) -> float:
    """``lr`` if given, else lr_at_256 (default LARS 0.3, AdamW 1e-3) × B/256 (linear) or × √(B/256) (sqrt)."""
    if cfg.lr is not None:
        return cfg.lr
    at_256 = cfg.lr_at_256 if cfg.lr_at_256 is not None else (0.3 if cfg.name == "lars" else 1e-3)
    ratio = global_batch / 256
    return at_256 * (ratio if cfg.scaling == "linear" else ratio ** 0.5)


def default_weight_decay(cfg: OptimConfig) -> float:
    if cfg.weight_decay is not None:
        return cfg.weight_decay
    return 1e-6 if cfg.name == "lars" else 0.05


def _as_list(modules: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    return [modules] if isinstance(modules, nn.Module) else list(modules)


def _groups(modules: nn.Module | Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """timm's decay / no-decay groups of ``modules``, without empty groups and without 0-d parameters."""
    groups = [g for m in _as_list(modules) for g in param_groups_weight_decay(m, weight_decay=weight_decay)]
    groups = [{**g, "params": [p for p in g["params"] if p.ndim > 0]} for g in groups]
    return [g for g in groups if g["params"]]


def scalar_parameters(modules: nn.Module | Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for m in _as_list(modules) for p in m.parameters() if p.requires_grad and p.ndim == 0]


def build_optimizer(modules: nn.Module | Iterable[nn.Module], cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    """LARS or AdamW over the parameters of ``modules`` that have a dimension; no decay (and no LARS adaptation) on
    1-D ones."""
    groups = _groups(modules, default_weight_decay(cfg))
    lr = base_lr(cfg, global_batch)
    if cfg.name == "lars":
        return Lars(groups, lr=lr, momentum=cfg.momentum, trust_coeff=0.001)
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))


def build_scalar_optimizer(modules: nn.Module | Iterable[nn.Module], cfg: OptimConfig) -> torch.optim.Optimizer | None:
    """Adam at ``cfg.scalar_lr``, no decay, over the 0-d parameters of ``modules``; None if there are none."""
    scalars = scalar_parameters(modules)
    return torch.optim.Adam(scalars, lr=cfg.scalar_lr) if scalars else None


class WarmupCosine:
    """Per-step linear warmup then cosine decay to ``min_lr_ratio``·lr (timm's CosineLRScheduler, stepped by update).

    ``clock`` (optional) maps the update count to the schedule's position in steps of a ``total_steps``-long
    schedule (a float): the trainer's budget clock, which runs the schedule over training time instead."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.1,
                 min_lr_ratio: float = 0.0) -> None:
        warmup = int(round(total_steps * warmup_fraction))
        lr0 = optimizer.param_groups[0]["lr"]
        self.inner = CosineLRScheduler(
            optimizer, t_initial=max(1, total_steps - warmup), lr_min=lr0 * min_lr_ratio, warmup_t=warmup,
            warmup_lr_init=lr0 * 1e-3 if warmup else lr0, warmup_prefix=True, t_in_epochs=False,
        )
        self.total_steps = total_steps
        self.clock: Callable[[int], float] | None = None
        self.step_count = 0
        self.refresh()

    def refresh(self) -> None:
        """Set the lr of the next update from the position of ``step_count`` (after the clock changed)."""
        position = self.step_count if self.clock is None else self.clock(self.step_count)
        self.inner.step_update(min(position, self.total_steps))

    def step(self) -> None:
        self.step_count += 1
        self.refresh()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        self.inner.load_state_dict(state["inner"])
        self.refresh()
