"""Image-grid PNGs of reconstructions and samples (torchvision.utils.save_image)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import save_image


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> Path:
    """Write ``images`` ``[n, C, H, W]`` in [0, 1] (clamped) as one PNG grid; ``nrow`` images per row (default ≈ √n)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    save_image(images.detach().float().clamp(0, 1).cpu(), path, nrow=nrow or max(1, math.ceil(math.sqrt(n))),
               padding=1, pad_value=1.0)
    return path
