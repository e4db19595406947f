"""How each contrastive loss scales: forward+backward time and peak memory against the batch size B (images),
optionally under W processes (CPU: gloo; CUDA: NCCL, one GPU per process), with the bare matrix-product floor of
the ranking forms measured alongside, on the same device as the loss.

Every (loss, B, W) configuration runs in fresh subprocesses (one per rank), so one configuration's allocations cannot
inflate another's peak; a configuration that fails is reported as failed, with the failing rank's last error line.
Peak memory on CPU is the process's peak resident set (ru_maxrss) above its resident set just before the inputs were
created — the inputs, activations and gradients of the loss; on CUDA it is torch.cuda.max_memory_allocated. Bytes
sent per worker per step are counted for ring collectives (all-gather: (W−1)/W of the gathered tensor; all-reduce:
2(W−1)/W of the reduced one), forward and backward.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from cluster.process_group import free_port, join_local_group
from pretrain.losses import VARIANTS, build_variant, variant_config

LOSSES = tuple(VARIANTS)  # the named losses of pretrain.losses, each a loss section of the run config
QUADRATIC = ("ranking", "ranking-blockwise", "binary-all-pairs")
FLOAT = 4
FLOOR_MAX_BATCH = 16384  # the matmul floor is timed up to here (it is O(B²) too)


@dataclass
class Config:
    loss: str                         # one of LOSSES
    batch: int                        # images in the global batch
    dim: int = 128
    world_size: int = 1
    block_size: int | None = None     # ranking-blockwise's tile; None: the run config's default
    num_negatives: int | None = None  # binary's negatives; None: the run config's default
    repeats: int = 3
    threads: int | None = None
    device: str = "cpu"      # "cuda": rank r on cuda:r


@dataclass
class Result:
    config: Config
    time_s: float | None = None          # median forward+backward seconds per step (slowest rank)
    peak_bytes: int | None = None        # peak memory of the loss step (max over ranks)
    floor_s: float | None = None         # bare matmuls of the same shapes (ranking forms)
    bytes_sent: int = 0                  # per worker per step, loss collectives only
    skipped: str | None = None           # not run, and why (too large for the memory here, beyond the O(B²) cap)
    error: str | None = None             # ran and failed (or timed out): the reason


def build(cfg: Config) -> torch.nn.Module:
    """The loss of ``cfg``, from the loss registry (run-config defaults for every setting ``cfg`` leaves None)."""
    return build_variant(cfg.loss, block_size=cfg.block_size, num_negatives=cfg.num_negatives)


def bytes_sent(cfg: Config) -> int:
    w = cfg.world_size
    if w == 1:
        return 0
    views = 2 * cfg.batch
    if cfg.loss in QUADRATIC:   # all-gather of [2B, d] forward; its backward (reduce-scatter; gloo: all-reduce)
        gather = (w - 1) / w * views * cfg.dim * FLOAT
        return int(gather + 2 * gather)
    if cfg.loss == "spectral":  # all-reduce of 2d² + 2 floats, forward and backward
        return int(2 * 2 * (w - 1) / w * (2 * cfg.dim ** 2 + 2) * FLOAT)
    return 0


def estimated_bytes(cfg: Config) -> int:
    """A conservative estimate of one rank's peak, to skip configurations this machine cannot hold."""
    views, local = 2 * cfg.batch, 2 * cfg.batch // cfg.world_size
    vectors = 8 * views * cfg.dim * FLOAT
    if cfg.loss in ("ranking", "binary-all-pairs"):
        return vectors + 5 * local * views * FLOAT
    if cfg.loss == "ranking-blockwise":
        return vectors + 6 * variant_config(cfg.loss, block_size=cfg.block_size).block_size ** 2 * FLOAT
    return vectors + 6 * local * cfg.dim * FLOAT


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rank_device(cfg: Config, rank: int) -> torch.device:
    """CPU, or this rank's own GPU ``cuda:rank`` made the current device (NCCL needs one GPU per rank)."""
    if cfg.device != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    return device


def backend(cfg: Config) -> str:
    return "nccl" if cfg.device == "cuda" else "gloo"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _floor(cfg: Config, local_views: int, device: torch.device) -> float:
    """Median time of the ranking forms' matrix products on ``device``: S = U Cᵀ, then ∂U = G C and ∂C = Gᵀ U
    (tiled like the blockwise form when the full S would not fit in memory)."""
    views = 2 * cfg.batch
    g = torch.Generator().manual_seed(1)
    u = torch.randn(local_views, cfg.dim, generator=g).to(device)
    c = torch.randn(views, cfg.dim, generator=g).to(device)
    tile = min(views, max(cfg.block_size or 0, 4096))
    times = []
    for _ in range(max(1, cfg.repeats)):
        _sync(device)
        t0 = time.perf_counter()
        for r0 in range(0, local_views, tile):
            ur = u[r0:r0 + tile]
            for c0 in range(0, views, tile):
                s = ur @ c[c0:c0 + tile].T
                s @ c[c0:c0 + tile]
                s.T @ ur
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_rank(cfg: Config, rank: int = 0) -> dict:
    """Measure one configuration on this rank (inside its own process)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = rank_device(cfg, rank)
    loss_fn = build(cfg).to(device)
    n = cfg.batch // cfg.world_size
    # warm up kernels and the collectives on a small batch before the baseline is taken
    small = torch.randn(8, cfg.dim, device=device, requires_grad=True)
    loss_fn(small, small.detach() + 1).backward()
    base = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    g = torch.Generator().manual_seed(rank)
    # the two views' projections stacked view-major, as SimCLRNet hands them to the loss in training
    z = torch.randn(2 * n, cfg.dim, generator=g).to(device).requires_grad_()
    times = []
    for _ in range(max(1, cfg.repeats)):
        z.grad = None
        _sync(device)
        t0 = time.perf_counter()
        loss_fn.stacked(z, 2).backward()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _maxrss_bytes() - base
    out = {"time_s": statistics.median(times), "peak_bytes": int(peak)}
    if cfg.loss in ("ranking", "ranking-blockwise") and rank == 0 and cfg.batch <= FLOOR_MAX_BATCH:
        out["floor_s"] = _floor(cfg, 2 * n, device)
    return out


def _rank_main(cfg: Config, rank: int, port: int) -> dict:
    import torch.distributed as dist
    rank_device(cfg, rank)  # before the process group: NCCL binds the current device
    join_local_group(backend(cfg), rank, cfg.world_size, port)
    try:
        return run_rank(cfg, rank)
    finally:
        dist.destroy_process_group()


def memory_budget(cfg: Config, memory_limit: int | None = None) -> tuple[int, int, str]:
    """(bytes needed, bytes available, where): on CUDA one rank's estimate against the smallest of its GPUs (90 %);
    on CPU all ranks' estimates against 60 % of this host's RAM."""
    if cfg.device == "cuda":
        gpu = min(torch.cuda.get_device_properties(r).total_memory for r in range(cfg.world_size))
        return estimated_bytes(cfg), memory_limit or int(0.9 * gpu), "GPU memory"
    ram = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.6)
    return estimated_bytes(cfg) * cfg.world_size, memory_limit or ram, "host memory"


def measure(cfg: Config, timeout: float = 1800.0, memory_limit: int | None = None) -> Result:
    """Run ``cfg`` in fresh subprocess(es) (one per rank) and collect the slowest rank's time and the largest peak;
    if a rank fails the others are stopped and the result carries the failing rank's last error line."""
    need, limit, where = memory_budget(cfg, memory_limit)
    if need > limit:
        return Result(cfg, skipped=f"needs ~{need / 2**30:.1f} GiB > {limit / 2**30:.1f} GiB of {where}",
                      bytes_sent=bytes_sent(cfg))
    port = free_port()
    payload = json.dumps(asdict(cfg))
    with contextlib.ExitStack() as stack:  # output to files: a rank never blocks on a full pipe
        outs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(cfg.world_size)]
        errs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(cfg.world_size)]
        procs = [subprocess.Popen([sys.executable, "-m", "cluster.bench.loss_scaling", payload, str(rank), str(port)],
                                  stdout=outs[rank], stderr=errs[rank], text=True) for rank in range(cfg.world_size)]
        failed = _wait_all(procs, timeout)
        if failed is not None:
            rank, why = failed
            if rank is not None:  # a failed rank's last stderr line: the exception that stopped it
                rank, why = _first_cause(procs, errs, rank, why)
            return Result(cfg, error=why, bytes_sent=bytes_sent(cfg))
        ranks = []
        for f in outs:
            f.seek(0)
            ranks.append(json.loads(f.read().strip().splitlines()[-1]))
    return Result(cfg, time_s=max(o["time_s"] for o in ranks), peak_bytes=max(o["peak_bytes"] for o in ranks),
                  floor_s=next((o["floor_s"] for o in ranks if "floor_s" in o), None), bytes_sent=bytes_sent(cfg))


# A rank whose peer died first fails inside a collective with one of these; the peer's own error is the cause.
_PEER_LOST = ("remote worker crash", "Connection closed by peer", "Connection reset", "Broken pipe")


def _first_cause(procs: list[subprocess.Popen], errs: list, rank: int, why: str) -> tuple[int, str]:
    """(rank, "rank R: LAST ERROR LINE") of the failed rank whose error is its own, not a lost peer's echo."""
    found = []
    for r, p in enumerate(procs):
        if p.returncode:
            errs[r].seek(0)
            lines = errs[r].read().strip().splitlines()
            found.append((r, lines[-1] if lines else f"exit code {p.returncode}"))
    own = [(r, line) for r, line in found if not any(m in line for m in _PEER_LOST)]
    r, line = (own or found or [(rank, why)])[0]
    return r, f"rank {r}: {line}"


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> tuple[int | None, str] | None:
    """Wait for every rank. On the first failure, or at the deadline, stop the others (their collectives would wait
    for the failed rank forever) and return (rank, "exit code N") or (None, "timed out after T s"); None if all
    succeeded."""
    deadline = time.monotonic() + timeout
    failed: tuple[int | None, str] | None = None
    while failed is None and any(p.poll() is None for p in procs):
        failed = next(((r, f"exit code {p.returncode}") for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
        if failed is None and time.monotonic() > deadline:
            failed = (None, f"timed out after {timeout:.0f} s")
        time.sleep(0.05)
    if failed is not None and failed[0] is not None:  # the others may be failing on their own: a moment to finish
        grace = time.monotonic() + 3.0
        while time.monotonic() < grace and any(p.poll() is None for p in procs):
            time.sleep(0.05)
    failed = failed or next(((r, f"exit code {p.returncode}") for r, p in enumerate(procs) if p.returncode), None)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    return failed


def loglog_fit(points: list[tuple[int, float]], lo: int | None = None,
               hi: int | None = None) -> tuple[float, float] | None:
    """Least-squares (s, c) of log y = c + s·log B over lo ≤ B ≤ hi, i.e. y ≈ e^c·B^s (None with fewer than two
    distinct B)."""
    pts = [(b, y) for b, y in points if y and y > 0 and (lo is None or b >= lo) and (hi is None or b <= hi)]
    if len(pts) < 2:
        return None
    xs = [math.log(b) for b, _ in pts]
    ys = [math.log(y) for _, y in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def loglog_slope(points: list[tuple[int, float]], lo: int | None = None, hi: int | None = None) -> float | None:
    """Least-squares slope of log y against log B over lo ≤ B ≤ hi (None with fewer than two points)."""
    fit = loglog_fit(points, lo, hi)
    return None if fit is None else fit[0]


if __name__ == "__main__":  # one rank of one configuration; prints a JSON line
    config = Config(**json.loads(sys.argv[1]))
    rank, port = int(sys.argv[2]), int(sys.argv[3])
    result = run_rank(config) if config.world_size == 1 else _rank_main(config, rank, port)
    print(json.dumps(result))
