"""The two calls of every contrastive loss: ``loss(z1, z2)`` for two views, ``loss.stacked(z, num_views)`` for M views.

``stacked`` takes this worker's projections of M ≥ 2 views of its n images as one view-major ``[M·n, d]`` tensor
(row a·n + i is view a of image i) — the layout the stream's views arrive in and SimCLRNet projects; each view's
positives are the other M − 1 views of its image. ``loss(z1, z2)`` is ``loss.stacked(cat([z1, z2]), 2)``.
"""

from __future__ import annotations

import torch
from torch import nn


class ContrastiveLoss(nn.Module):
    """Subclasses implement ``_stacked(z, num_views)`` on a validated ``[M·n, d]`` tensor."""

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must both be [n, d]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
        return self._stacked(torch.cat([z1, z2]), 2)

    def stacked(self, z: torch.Tensor, num_views: int) -> torch.Tensor:
        """The loss of ``num_views`` views of ``len(z) // num_views`` images stacked view-major in ``z``."""
        if z.ndim != 2 or num_views < 2 or z.shape[0] % num_views:
            raise ValueError(f"stacked views must be [num_views·n, d] with num_views >= 2; got {tuple(z.shape)} "
                             f"and num_views={num_views}")
        return self._stacked(z, num_views)

    def _stacked(self, z: torch.Tensor, num_views: int) -> torch.Tensor:
        raise NotImplementedError
