"""Binary (logistic) NCE: each pair is classified as positive or negative, p(y=1 | x, x') = σ(t·uᵀu' + b).

O(B) form (default): anchor i (both views act as anchors) gets its positive and k negatives from shifts of the
local batch, n_m(i) = the other view of image (i + m) mod n, m = 1..k:
    ℓ_i = −log σ(t s_{i,p(i)} + b) − Σ_{m≤k} log σ(−(t s_{i,n_m(i)} + b)),   L_local = mean_i ℓ_i.
No gather; cost O(n·k·d). Negatives live inside each worker's batch, so the global loss is by definition the
mean of the workers' local losses, and DDP's gradient average is its exact gradient.

All-pairs form (``all_pairs=True``, SigLIP-like, O(B²)): every one of the 2N views is an anchor against all
other 2N−1 views (one positive, 2N−2 negatives), columns gathered with gradient like the ranking loss:
L = (1/2N) Σ_k ℓ_k, exact under data parallelism.

t = exp(t') and b are learnable; SigLIP's init t' = log 10; b = −log k for the O(B) form (the prior log-odds of
a positive among k+1 candidates), −10 for all-pairs (SigLIP's value for batches of thousands).
Computed in fp32 with softplus: −log σ(x) = softplus(−x), finite for any logit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.losses.distributed import check_equal_shards, gather_with_grad, pair_indices, world


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n] row-wise dot products as a batched 1×d·d×1 product: no [n, d] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _shifted_rowdot(a: torch.Tensor, b: torch.Tensor, m: int) -> torch.Tensor:
    """[n] with entry i = a_i · b_{(i+m) mod n}."""
    n = a.shape[0]
    return torch.cat([_rowdot(a[: n - m], b[m:]), _rowdot(a[n - m:], b[:m])])


class BinaryNCE(nn.Module):
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

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must both be [n, d]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            u1, u2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
            t, b = self.logit_scale.float().exp(), self.bias.float()
            return self._all_pairs(u1, u2, t, b) if self.all_pairs else self._shifted(u1, u2, t, b)

    def _shifted(self, u1: torch.Tensor, u2: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, k = u1.shape[0], self.num_negatives
        if k >= n:
            raise ValueError(f"binary NCE: num_negatives={k} needs a local batch > {k}, got {n}")
        # s(u1_i, u2_i) is the positive of both anchors u1_i and u2_i: one dot product, counted twice.
        total = 2 * F.softplus(-(t * _rowdot(u1, u2) + b)).sum()
        for m in range(1, k + 1):  # negatives: the other view of image (i + m) mod n, read as two slices (no copy)
            for a, o in ((u1, u2), (u2, u1)):
                total = total + F.softplus(t * _shifted_rowdot(a, o, m) + b).sum()
        return total / (2 * n)

    def _all_pairs(self, u1: torch.Tensor, u2: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = u1.shape[0]
        if not self._shards_checked:  # one host read, on the first forward only
            check_equal_shards(n, u1.device)
            self._shards_checked = True
        u = torch.cat([u1, u2])
        rank, _ = world()
        cols = gather_with_grad(u)
        self_idx, pos_idx = pair_indices(n, rank, u.device)
        logits = t * (u @ cols.T) + b
        rows = torch.arange(2 * n, device=u.device)
        sign = torch.ones_like(logits).index_put_((rows, pos_idx), logits.new_full((), -1.0))
        per_pair = F.softplus(sign * logits)   # positives: softplus(−x); negatives: softplus(x)
        per_pair = per_pair.index_put((rows, self_idx), logits.new_zeros(()))
        return per_pair.sum(1).mean()

    def extra_repr(self) -> str:
        return f"num_negatives={self.num_negatives}, all_pairs={self.all_pairs}"
