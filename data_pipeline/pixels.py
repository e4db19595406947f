"""The pixel convention: images travel as uint8 ``[…, 3, H, W]`` in [0, 255]; models take float32 ``x / 255``."""

from __future__ import annotations

import torch


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 ``x / 255`` in [0, 1]; float input is taken to be in [0, 1] already (cast to float32)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] → uint8 ``round(255·x)`` (clamped); overwrites ``x``."""
    return x.mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
