"""The data-parallel contract of every contrastive loss, run with a real backend.

W processes (NCCL with rank r on cuda:r, or gloo on CPU) each compute a loss on their shard of a batch inside a
DDP-wrapped encoder; one process computes it on the whole batch. Contract: the mean of the ranks' losses is the
single-process loss and every rank's parameter gradients (temperature/bias included) are the single-process
gradients — for the O(B) binary loss, whose negatives stay inside each rank, the single process computes the mean of
the ranks' local losses over the same partition. Shards are drawn unlike each other, so a missing gradient path
through a collective shows. ``num_views`` > 2 checks the multi-view (multi-crop) form ``loss.stacked(z, M)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cluster.process_group import free_port, join_local_group
from pretrain.losses import BinaryNCE, RankingNCE, SpectralContrastive

N_LOCAL, D_IN, D_OUT = 6, 10, 8
CASES: dict[str, Callable[[], nn.Module]] = {
    "ranking": lambda: RankingNCE(0.2),
    "ranking-blockwise": lambda: RankingNCE(0.2, block_size=5),
    "binary-all-pairs": lambda: BinaryNCE(all_pairs=True, init_bias=-1.0),
    "binary": lambda: BinaryNCE(num_negatives=2),
    "spectral": lambda: SpectralContrastive(0.7),
}
LOCAL_NEGATIVES = ("binary",)  # losses whose global value is by definition the mean of the local ones
# (rtol, atol) per backend: CPU fp32 differs from one process by summation order only; GPUs reduce in other orders
TOLERANCE = {"gloo": (1e-4, 1e-6), "nccl": (1e-3, 1e-5)}


class Net(nn.Module):
    """A tiny encoder with the loss inside one module, as in SimCLR's DDP wrapper (learnable t/b averaged by DDP)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, D_OUT))
        self.loss = loss

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        """``x``: ``[M·n, D_IN]`` view-major."""
        return self.loss.stacked(self.enc(x), num_views)


def global_batch(world: int, num_views: int = 2) -> torch.Tensor:
    """``[M, W·N_LOCAL, D_IN]``: M views of the global batch; rank r's rows are drawn with scale (1 + r) and offset r,
    shards that look nothing alike."""
    g = torch.Generator().manual_seed(42)
    parts = [(torch.randn(num_views, N_LOCAL, D_IN, generator=g) * (1 + r) + r) for r in range(world)]
    return torch.cat(parts, dim=1)


def rank_rows(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank ``rank``'s shard of ``global_batch``, stacked view-major ``[M·N_LOCAL, D_IN]``."""
    return x[:, rank * N_LOCAL:(rank + 1) * N_LOCAL].flatten(0, 1)


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().cpu().clone() for k, p in module.named_parameters()}


def single_process(name: str, world: int, num_views: int = 2) -> tuple[float, dict[str, torch.Tensor]]:
    """(loss, parameter gradients) of one process holding the whole batch, on CPU."""
    net = Net(CASES[name]())
    x = global_batch(world, num_views)
    if name in LOCAL_NEGATIVES:
        loss = torch.stack([net(rank_rows(x, r), num_views) for r in range(world)]).mean()
    else:
        loss = net(x.flatten(0, 1), num_views)
    loss.backward()
    return float(loss.detach()), grads(net)


def _worker(rank: int, world: int, port: int, backend: str, num_views: int, queue) -> None:
    import torch.distributed as dist

    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    join_local_group(backend, rank, world, port)
    torch.set_num_threads(1)
    try:
        out = {}
        for name in CASES:
            net = Net(CASES[name]()).to(device)
            ddp = nn.parallel.DistributedDataParallel(net, device_ids=[rank] if device.type == "cuda" else None)
            loss = ddp(rank_rows(global_batch(world, num_views), rank).to(device), num_views)
            loss.backward()
            value = loss.detach().clone()
            dist.all_reduce(value)
            out[name] = (float(value) / world, {k: v.numpy() for k, v in grads(net).items()})  # by value, not shm
        queue.put((rank, out))
    except BaseException as exc:
        queue.put((rank, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, backend: str, timeout: float = 300.0, num_views: int = 2) -> dict[int, dict]:
    """Each rank's {loss name: (mean loss over ranks, gradients)} from ``world`` spawned processes."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, backend, num_views, queue)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=timeout) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    failed = {r: v for r, v in results.items() if isinstance(v, str)}
    if failed:
        rank = min(failed)
        raise RuntimeError(f"rank {rank} of {world} ({backend}): {failed[rank]}")
    return results


def ddp_contract(world: int = 2, backend: str = "gloo") -> dict[str, dict]:
    """Per loss: {"ok", "loss_diff" (relative), "grad_diff" (max |Δ| over parameters relative to the largest
    gradient)} of ``world`` DDP ranks against one process, every rank compared."""
    rtol, atol = TOLERANCE[backend]
    ranks = run_ranks(world, backend)
    report = {}
    for name in CASES:
        ref_value, ref_grads = single_process(name, world)
        ok, loss_diff, grad_diff = True, 0.0, 0.0
        for rank in range(world):
            value, got = ranks[rank][name]
            loss_diff = max(loss_diff, abs(value - ref_value) / max(abs(ref_value), 1e-12))
            ok &= abs(value - ref_value) <= atol + rtol * abs(ref_value)
            for k, ref in ref_grads.items():
                g = torch.from_numpy(got[k])
                grad_diff = max(grad_diff, float((g - ref).abs().max()) / max(float(ref.abs().max()), 1e-12))
                ok &= torch.allclose(g, ref, rtol=rtol, atol=atol)
        report[name] = {"ok": bool(ok), "loss_diff": loss_diff, "grad_diff": grad_diff}
    return report
