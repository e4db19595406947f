"""Ranking NCE (SimCLR's NT-Xent) over all M·N views of the global batch, exact under data parallelism.

With M views per image (M = 2, or 2 + L with multi-crop), P(k) the M − 1 other views of view k's image:

    s_kl = u_kᵀu_l / τ,   ℓ_k = −(1/(M−1)) Σ_{p∈P(k)} s_kp + log Σ_{l≠k} exp(s_kl),   L = (1/MN) Σ_k ℓ_k

(SupCon's L_out with the image as the class; M = 2 is NT-Xent.) Each worker gathers every view (with gradient),
computes ℓ_k for its own M·n rows against all M·N columns and returns their mean; the mean over workers is L and
DDP's gradient average is the single-process gradient.
Maths in fp32 whatever the autocast; the diagonal is excluded with −inf (no large constants).
``block_size`` switches to the tiled, memory-bounded form (ranking_blockwise.py): same value and gradient.
No host-device synchronisation after the first forward (which checks that every worker holds as many rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.config import RankingLoss
from pretrain.losses.base import ContrastiveLoss
from pretrain.losses.distributed import check_equal_shards, gather_with_grad, view_indices, world
from pretrain.losses.ranking_blockwise import blockwise_ranking_nce


class RankingNCE(ContrastiveLoss):
    def __init__(self, temperature: float = RankingLoss.model_fields["temperature"].default,
                 block_size: int | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
        self.temperature = temperature
        self.block_size = block_size
        self._shards_checked = False

    def _stacked(self, z: torch.Tensor, num_views: int) -> torch.Tensor:
        n = z.shape[0] // num_views
        if not self._shards_checked:
            check_equal_shards(n, z.device)
            self._shards_checked = True
        with torch.autocast(device_type=z.device.type, enabled=False):
            u = F.normalize(z.float(), dim=1)
            rank, _ = world()
            columns = gather_with_grad(u)
            self_idx, pos_idx = view_indices(n, num_views, rank, u.device)
            if self.block_size is not None:
                return blockwise_ranking_nce(u, columns, rank * num_views * n, pos_idx, self.temperature,
                                             self.block_size)
            logits = u @ columns.T / self.temperature
            rows = torch.arange(num_views * n, device=u.device)
            positive = logits[rows[:, None], pos_idx].mean(1)  # indexing, not gather: its backward holds one B² less
            logits = logits.index_put((rows, self_idx), logits.new_full((), float("-inf")))
            return (torch.logsumexp(logits, dim=1) - positive).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, block_size={self.block_size}"
