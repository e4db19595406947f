"""Autograd-aware collectives for losses under data parallelism, every case explicit.

- ``gather_with_grad(x)``: forward all-gather of equal-shaped ``[n, d]`` shards → ``[W·n, d]`` (rank order);
  backward: the gradient of the gathered tensor summed over workers, this rank's slice kept (a reduce-scatter).
  With DDP averaging parameter gradients, a loss computed on local rows against gathered columns then has
  exactly the single-process gradient of the mean over workers' losses.
- ``all_reduce_with_grad(x)``: forward sum over workers; backward sum of the gradients over workers. If every
  worker computes the same function of the sum, each worker's gradient is W × its share, and DDP's mean
  turns that into the single-process gradient.
Without an initialised process group (or with one rank) both are the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# Newer torch names these all_gather_single / reduce_scatter_single and deprecates the *_tensor names.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _supports_reduce_scatter() -> bool:
    return dist.get_backend() in ("nccl", "xccl")  # gloo has no reduce_scatter


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, size = world()
        ctx.rank, ctx.size, ctx.n = rank, size, x.shape[0]
        out = x.new_empty((size * x.shape[0], *x.shape[1:]))
        _all_gather(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        if _supports_reduce_scatter():
            out = grad.new_empty((ctx.n, *grad.shape[1:]))
            _reduce_scatter(out, grad, op=dist.ReduceOp.SUM)
            return out
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # gloo: all-reduce, then keep this rank's rows
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n].clone()


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def check_equal_shards(n_local: int, device: torch.device) -> None:
    """All workers must hold the same number of rows (the data plan guarantees it); fail loudly otherwise.
    One all-reduce on ``device`` (the inputs' device, so NCCL/XCCL get their own GPU) and a host read: the losses
    call it on their first forward only."""
    _, size = world()
    if size == 1:
        return
    t = torch.tensor([n_local, -n_local], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != n_local or int(-t[1]) != n_local:
        raise ValueError(f"contrastive loss: workers hold different batch sizes (max {int(t[0])}, min {int(-t[1])}, "
                         f"this rank {n_local}); every rank must get the same local batch")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    _, size = world()
    return x if size == 1 else _GatherWithGrad.apply(x)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    _, size = world()
    return x if size == 1 else _AllReduceWithGrad.apply(x)


def view_indices(n: int, num_views: int, rank: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For this rank's M·n views (view-major: row a·n + i is view a of image i) inside the gathered ``[W·M·n]`` views
    (each rank's block its own view-major rows): the global index of each local view ``[M·n]``, and of its M − 1
    positives, the other views of its image in the order a+1, …, a+M−1 (mod M), ``[M·n, M−1]``."""
    base = rank * num_views * n
    local = torch.arange(num_views * n, device=device)
    shift = torch.arange(1, num_views, device=device)
    positive = ((local[:, None] // n + shift) % num_views) * n + local[:, None] % n
    return base + local, base + positive
