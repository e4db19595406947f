"""Runs side by side as a figure: probe and kNN top-1 against one column of `bigbatch compare` (a config key,
the batch, the wall time), one line per value of another (the loss) or of several (``by`` = "loss,optim.name")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.figures import numeric, save_figure

METRICS = (("probe_top1", "probe top-1 (%)"), ("knn_top1", "kNN top-1 (%)"))


def group_of(row: dict[str, Any], by: str) -> str:
    """The row's value of ``by``, or of each comma-separated key of it joined by " / "."""
    return " / ".join(str(row.get(k)) for k in by.split(","))


def series(rows: list[dict[str, Any]], x: str, by: str, metric: str) -> dict[str, list[tuple[Any, float]]]:
    """{str(by value): [(x, metric), …]} over the rows that have the metric, sorted by x when x is numeric; groups in
    order of appearance."""
    out: dict[str, list[tuple[Any, float]]] = {}
    for r in rows:
        if isinstance(r.get(metric), (int, float)):
            out.setdefault(group_of(r, by), []).append((r.get(x), r[metric]))
    by_x = numeric([r.get(x) for r in rows])
    return {g: sorted(pts, key=lambda p: p[0]) if by_x else pts for g, pts in out.items()}


def plot_runs(rows: list[dict[str, Any]], x: str, by: str, path: Path, title: str | None = None) -> Path:
    """Two panels (probe, kNN): each metric against ``rows[i][x]``, a line per distinct ``rows[i][by]`` sorted by x;
    a base-2 log x axis when x is numeric, positive and spans at least 4×. Runs without the metric are left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
    xs_all = [r.get(x) for r in rows]
    categorical = not numeric(xs_all)
    labels = list(dict.fromkeys(str(v) for v in xs_all)) if categorical else []
    for ax, (metric, _) in zip(axes[0], METRICS, strict=True):
        for g, pts in series(rows, x, by, metric).items():
            xs = [labels.index(str(p[0])) if categorical else p[0] for p in pts]
            ax.plot(xs, [100 * p[1] for p in pts], "o-", label=f"{by}={g}", alpha=0.85)
        if categorical:
            ax.set_xticks(range(len(labels)), labels)
        elif xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(x)
    return _finish(fig, axes, path, title, legend_size=8)


def plot_curves(rows: list[dict[str, Any]], curves: list[list[dict[str, Any]]], by: str, x: str, path: Path,
                title: str | None = None) -> Path:
    """Two panels (probe, kNN): each run's probe curve (``eval.probe_curve``) against wall-clock minutes, a line per
    run labelled by its ``by`` and ``x`` values; one colour per ``by`` value, one marker per ``x`` value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(group_of(r, by) for r in rows))
    xs = list(dict.fromkeys(str(r.get(x)) for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^Dv<>p*h"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
    for ax, (metric, _) in zip(axes[0], METRICS, strict=True):
        for r, points in zip(rows, curves, strict=True):
            pts = [p for p in points if isinstance(p.get(metric), (int, float))]
            if not pts:
                continue
            g, v = group_of(r, by), str(r.get(x))
            ax.plot([p["time_s"] / 60 for p in pts], [100 * p[metric] for p in pts], "-",
                    color=colours[groups.index(g) % len(colours)], marker=markers[xs.index(v) % len(markers)],
                    label=f"{by}={g}, {x}={v}", alpha=0.85)
        ax.set_xlabel("wall time (min)")
    return _finish(fig, axes, path, title, legend_size=7)


def _finish(fig: Any, axes: Any, path: Path, title: str | None, legend_size: int) -> Path:
    """The panels' y labels, grids and legend, the title; the figure written through ``save_figure``."""
    for ax, (_, label) in zip(axes[0], METRICS, strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=legend_size)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)
