"""Binary (logistic) NCE: each pair is classified as positive or negative, p(y=1 | x, x') = σ(t·uᵀu' + b).

M views per image (M = 2, or 2 + L with multi-crop), u^a_i the unit projection of view a of image i.

O(B) form (default): every ordered pair of distinct views (a, c) of image i is an anchor with its positive u^c_i and
k negatives from shifts of the local batch, u^c_{(i+m) mod n}, m = 1..k:
    L_local = (1/(M(M−1)n)) Σ_{a≠c} Σ_i [−log σ(t s(u^a_i, u^c_i) + b) − Σ_{m≤k} log σ(−(t s(u^a_i, u^c_{(i+m) mod n}) + b))].
No gather; cost O(M²·n·k·d). Negatives live inside each worker's batch, so the global loss is by definition the
mean of the workers' local losses, and DDP's gradient average is its exact gradient.

All-pairs form (``all_pairs=True``, SigLIP-like, O(B²)): every one of the M·N views k is an anchor against all
other M·N − 1 views l (positive y_kl = 1 for the M − 1 other views of its image, y_kl = −1 for the rest), columns
gathered with gradient like the ranking loss:
    L = (1/MN) Σ_k Σ_{l≠k} −log σ(y_kl (t s_kl + b)),   exact under data parallelism.

t = exp(t') and b are learnable; SigLIP's init t' = log 10; b = −log k for the O(B) form (the prior log-odds of
a positive among k+1 candidates), −10 for all-pairs (SigLIP's value for batches of thousands).
Computed in fp32 with softplus: −log σ(x) = softplus(−x), finite for any logit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.losses.base import ContrastiveLoss
from pretrain.losses.distributed import check_equal_shards, gather_with_grad, view_indices, world


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n] row-wise dot products as a batched 1×d·d×1 product: no [n, d] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _shifted_rowdot(a: torch.Tensor, b: torch.Tensor, m: int) -> torch.Tensor:
    """[n] with entry i = a_i · b_{(i+m) mod n}."""
    n = a.shape[0]
    return torch.cat([_rowdot(a[: n - m], b[m:]), _rowdot(a[n - m:], b[:m])])


class BinaryNCE(ContrastiveLoss):
    def __init__(self, num_negatives: int = 1, all_pairs: bool = False, init_logit_scale: float = math.log(10.0),
                 init_bias: float | None = None, learnable: bool = True) -> None:
        super().__init__()
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = num_negatives
        self.all_pairs = all_pairs
        self._shards_checked = False
        if init_bias is None:
            init_bias = -10.0 if all_pairs else -math.log(num_negatives)
        scale = torch.tensor(float(init_logit_scale))
        bias = torch.tensor(float(init_bias))
        if learnable:
            self.logit_scale, self.bias = nn.Parameter(scale), nn.Parameter(bias)
        else:
            self.register_buffer("logit_scale", scale)
            self.register_buffer("bias", bias)

    def _stacked(self, z: torch.Tensor, num_views: int) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            u = F.normalize(z.float(), dim=1)
            t, b = self.logit_scale.float().exp(), self.bias.float()
            return self._all_pairs(u, num_views, t, b) if self.all_pairs else self._shifted(u, num_views, t, b)

    def _shifted(self, u: torch.Tensor, num_views: int, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, k = u.shape[0] // num_views, self.num_negatives
        if k >= n:
            raise ValueError(f"binary NCE: num_negatives={k} needs a local batch > {k}, got {n}")
        views = u.view(num_views, n, -1).unbind(0)
        pairs = [(a, c) for a in range(num_views) for c in range(num_views) if a != c]
        total = 0.0
        # s(u^a_i, u^c_i) is the positive of both anchors (a, c) and (c, a): one dot product, counted twice.
        for a, c in pairs:
            if a < c:
                total = total + 2 * F.softplus(-(t * _rowdot(views[a], views[c]) + b)).sum()
        for m in range(1, k + 1):  # negatives: view c of image (i + m) mod n, read as two slices (no copy)
            for a, c in pairs:
                total = total + F.softplus(t * _shifted_rowdot(views[a], views[c], m) + b).sum()
        return total / (len(pairs) * n)

    def _all_pairs(self, u: torch.Tensor, num_views: int, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = u.shape[0] // num_views
        if not self._shards_checked:  # one host read, on the first forward only
            check_equal_shards(n, u.device)
            self._shards_checked = True
        rank, _ = world()
        cols = gather_with_grad(u)
        self_idx, pos_idx = view_indices(n, num_views, rank, u.device)
        logits = t * (u @ cols.T) + b
        rows = torch.arange(num_views * n, device=u.device)
        sign = torch.ones_like(logits).index_put_((rows[:, None].expand_as(pos_idx), pos_idx),
                                                  logits.new_full((), -1.0))
        per_pair = F.softplus(sign * logits)   # positives: softplus(−x); negatives: softplus(x)
        per_pair = per_pair.index_put((rows, self_idx), logits.new_zeros(()))
        return per_pair.sum(1).mean()

    def extra_repr(self) -> str:
        return f"num_negatives={self.num_negatives}, all_pairs={self.all_pairs}"
