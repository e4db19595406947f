"""Running the loss-scaling sweep and presenting it: table, JSON summary, fitted slopes and a log–log PNG."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cluster.bench.loss_scaling import LOSSES, QUADRATIC, Config, Result, loglog_slope, measure
from eval.figures import save_figure

DEFAULT_BATCHES = (1024, 4096, 8192, 16384, 65536, 262144, 1048576)
QUADRATIC_MAX = {"ranking": 8192, "binary-all-pairs": 8192, "ranking-blockwise": 65536}


def sweep(batches: Sequence[int], dim: int, world_size: int, losses: Sequence[str] = LOSSES,
          block_size: int | None = None,
          repeats: int = 3, max_quadratic: dict[str, int] | None = None,
          on_result: Callable[[Result], None] | None = None, device: str = "cpu",
          threads: int | None = None) -> list[Result]:
    caps = {**QUADRATIC_MAX, **(max_quadratic or {})}
    results = []
    for loss in losses:
        for b in sorted(batches):
            cfg = Config(loss, b, dim=dim, world_size=world_size, block_size=block_size, device=device,
                         threads=threads,
                         repeats=repeats if (b < 65536 or loss not in QUADRATIC) and b <= 262144 else 1)
            if loss in QUADRATIC and b > caps.get(loss, b):
                r = Result(cfg, skipped=f"O(B²) beyond B={caps[loss]} (--max-quadratic)")
            else:
                r = measure(cfg)
            results.append(r)
            if on_result:
                on_result(r)
    return results


def slopes(results: list[Result], lo: int = 4096, hi: int = 1 << 20) -> dict[str, dict[str, float | None]]:
    out = {}
    for loss in dict.fromkeys(r.config.loss for r in results):
        rs = [r for r in results if r.config.loss == loss and r.time_s is not None]
        out[loss] = {
            "time_slope": _round(loglog_slope([(r.config.batch, r.time_s) for r in rs], lo, hi)),
            "memory_slope": _round(loglog_slope([(r.config.batch, r.peak_bytes) for r in rs], lo, hi)),
        }
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def row(r: Result) -> str:
    c = r.config
    if r.skipped or r.error:
        note = f"FAILED: {r.error}" if r.error else f"skipped: {r.skipped}"
        return f"{c.loss:18s}{c.batch:>9d}  {'—':>9s}  {'—':>10s}  {'—':>9s}  {'—':>7s}  {r.bytes_sent / 2**20:>9.2f}  {note}"
    floor = f"{r.floor_s:9.3f}" if r.floor_s else f"{'':>9s}"
    ratio = f"{r.time_s / r.floor_s:7.2f}" if r.floor_s else f"{'':>7s}"
    return (f"{c.loss:18s}{c.batch:>9d}  {r.time_s:9.3f}  {r.peak_bytes / 2**20:10.1f}  {floor}  {ratio}  "
            f"{r.bytes_sent / 2**20:9.2f}")


HEADER = (f"{'loss':18s}{'B':>9s}  {'time s':>9s}  {'peak MiB':>10s}  {'floor s':>9s}  {'×floor':>7s}  {'MiB sent':>9s}")


def summary(results: list[Result], dim: int, world_size: int, device: str = "cpu") -> dict:
    by = {(r.config.loss, r.config.batch): r for r in results}
    out: dict = {"bench": "losses", "dim": dim, "world_size": world_size, "device": device,
                 "slopes_4096_to_1M": slopes(results)}
    failed = [{"loss": r.config.loss, "batch": r.config.batch, "error": r.error} for r in results if r.error]
    if failed:
        out["failed"] = failed
    blk8k, plain8k, blk64k = by.get(("ranking-blockwise", 8192)), by.get(("ranking", 8192)), by.get(("ranking-blockwise", 65536))
    if blk8k and blk8k.time_s and blk8k.floor_s:
        out["blockwise_8192_over_floor"] = round(blk8k.time_s / blk8k.floor_s, 3)
    if blk8k and plain8k and blk8k.time_s and plain8k.time_s:
        out["blockwise_8192_over_plain"] = round(blk8k.time_s / plain8k.time_s, 3)
        out["blockwise_8192_peak_over_plain"] = round(blk8k.peak_bytes / plain8k.peak_bytes, 4)
    if blk64k and blk64k.peak_bytes is not None:
        out["blockwise_65536_peak_gib"] = round(blk64k.peak_bytes / 2**30, 3)
    out["results"] = [{"loss": r.config.loss, "batch": r.config.batch, "time_s": r.time_s, "peak_bytes": r.peak_bytes,
                       "floor_s": r.floor_s, "bytes_sent": r.bytes_sent, "skipped": r.skipped, "error": r.error}
                      for r in results]
    return out


def plot(results: list[Result], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for loss in dict.fromkeys(r.config.loss for r in results):
        rs = [r for r in results if r.config.loss == loss and r.time_s is not None]
        if not rs:
            continue
        b = [r.config.batch for r in rs]
        ax_t.plot(b, [r.time_s for r in rs], "o-", label=loss)
        ax_m.plot(b, [r.peak_bytes / 2**20 for r in rs], "o-", label=loss)
        floors = [(r.config.batch, r.floor_s) for r in rs if r.floor_s]
        if loss == "ranking-blockwise" and floors:
            ax_t.plot(*zip(*floors, strict=True), "k:", label="matmul floor")
    for ax, ylabel in ((ax_t, "forward+backward time (s)"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (images; 2B views)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, Path(path), dpi=110)
