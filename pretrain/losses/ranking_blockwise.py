"""Memory-bounded ranking NCE: the plain loss computed tile by tile, never holding the [rows × columns] logits.

Forward: for each row tile, a running log-sum-exp over column tiles (self-similarity masked with −inf), and the
mean positive logit (over row k's P positives P(k)) as row-wise dot products. Backward recomputes each tile:
    ∂L/∂s_kl = (softmax_l(s_k·) − 1[l ∈ P(k)] / P) / R,  with softmax over l ≠ k,
    ∂L/∂u_k = Σ_l ∂L/∂s_kl · c_l / τ,   ∂L/∂c_l = Σ_k ∂L/∂s_kl · u_k / τ.
Memory O((R + C)·d + block²) instead of O(R·C); tiles of block² fp32 stay in cache.
Row k's self-similarity is column ``base + k`` (the rows are a contiguous block of the columns), so each tile's
masked entries are one diagonal found from integers: no host-device synchronisation per tile.
"""

from __future__ import annotations

import torch


def _tiles(total: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, total)) for s in range(0, total, block)]


def _masked_tile(rows: torch.Tensor, cols: torch.Tensor, r0: int, c0: int, c1: int, base: int,
                 inv_t: float) -> torch.Tensor:
    """Logits of a tile with the self-similarity entries (if in this column range) set to −inf: tile entry (i, j)
    is row r0 + i against column c0 + j, a self pair when j − i = base + r0 − c0."""
    s = (rows @ cols[c0:c1].T).mul_(inv_t)
    offset = base + r0 - c0
    if -s.shape[0] < offset < s.shape[1]:
        s.diagonal(offset).fill_(float("-inf"))
    return s


class _BlockwiseRankingNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cols, base: int, pos_idx, temperature: float, block: int):  # type: ignore[override]
        inv_t = 1.0 / temperature
        n_rows, n_cols = rows.shape[0], cols.shape[0]
        lse = torch.empty(n_rows, dtype=rows.dtype, device=rows.device)
        for r0, r1 in _tiles(n_rows, block):
            run = torch.full((r1 - r0,), float("-inf"), dtype=rows.dtype, device=rows.device)
            for c0, c1 in _tiles(n_cols, block):
                run = torch.logaddexp(run, torch.logsumexp(_masked_tile(rows[r0:r1], cols, r0, c0, c1, base, inv_t), 1))
            lse[r0:r1] = run
        positive = (rows.unsqueeze(1) * cols[pos_idx]).sum(2).mean(1) * inv_t
        ctx.save_for_backward(rows, cols, pos_idx, lse)
        ctx.inv_t, ctx.block, ctx.base = inv_t, block, base
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        rows, cols, pos_idx, lse = ctx.saved_tensors
        inv_t, block, base = ctx.inv_t, ctx.block, ctx.base
        n_rows, n_cols = rows.shape[0], cols.shape[0]
        scale = grad_out * inv_t / n_rows
        g_rows = torch.zeros_like(rows)
        g_cols = torch.zeros_like(cols)
        for r0, r1 in _tiles(n_rows, block):
            u = rows[r0:r1]
            for c0, c1 in _tiles(n_cols, block):
                p = _masked_tile(u, cols, r0, c0, c1, base, inv_t).sub_(lse[r0:r1, None]).exp_()  # exp(−inf) = 0
                g_rows[r0:r1].addmm_(p, cols[c0:c1])
                g_cols[c0:c1].addmm_(p.T, u)
        npos = pos_idx.shape[1]
        g_rows -= cols[pos_idx].mean(1)
        g_cols.index_add_(0, pos_idx.reshape(-1), rows.repeat_interleave(npos, 0).div_(-npos))
        return g_rows * scale, g_cols * scale, None, None, None, None


def blockwise_ranking_nce(rows: torch.Tensor, cols: torch.Tensor, base: int, pos_idx: torch.Tensor,
                          temperature: float, block: int) -> torch.Tensor:
    """Mean over ``rows`` of ℓ_k against ``cols`` (fp32, unit-norm inputs), computed in ``block``-sized tiles; row k's
    self-similarity (excluded) is column ``base + k``, its positives the columns ``pos_idx[k]`` (``[rows, P]``)."""
    return _BlockwiseRankingNCE.apply(rows, cols, base, pos_idx, temperature, block)
