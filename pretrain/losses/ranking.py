"""Ranking NCE (SimCLR's NT-Xent) over all 2N views of the global batch, exact under data parallelism.

    s_kl = u_kᵀu_l / τ,   ℓ_k = −s_{k,p(k)} + log Σ_{l≠k} exp(s_kl),   L = (1/2N) Σ_k ℓ_k

Each worker gathers every view (with gradient), computes ℓ_k for its own 2n rows against all 2N columns and
returns their mean; the mean over workers is L and DDP's gradient average is the single-process gradient.
Maths in fp32 whatever the autocast; the diagonal is excluded with −inf (no large constants).
``block_size`` switches to the tiled, memory-bounded form (ranking_blockwise.py): same value and gradient.
No host-device synchronisation after the first forward (which checks that every worker holds as many rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.config import RankingLoss
from pretrain.losses.distributed import check_equal_shards, gather_with_grad, pair_indices, world


class RankingNCE(nn.Module):
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

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must both be [n, d]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        if not self._shards_checked:
            check_equal_shards(n, z1.device)
            self._shards_checked = True
        with torch.autocast(device_type=z1.device.type, enabled=False):
            u = F.normalize(torch.cat([z1, z2]).float(), dim=1)
            rank, _ = world()
            columns = gather_with_grad(u)
            self_idx, pos_idx = pair_indices(n, rank, u.device)
            if self.block_size is not None:
                from pretrain.losses.ranking_blockwise import blockwise_ranking_nce
                return blockwise_ranking_nce(u, columns, rank * 2 * n, pos_idx, self.temperature, self.block_size)
            logits = u @ columns.T / self.temperature
            rows = torch.arange(2 * n, device=u.device)
            positive = logits[rows, pos_idx]
            logits = logits.index_put((rows, self_idx), logits.new_full((), float("-inf")))
            return (torch.logsumexp(logits, dim=1) - positive).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, block_size={self.block_size}"
