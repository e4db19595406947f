"""A sweep's results: one row per trial as a markdown table, CSV and JSON, and a PNG of the metric against each key.

Every file is written to a temp name and renamed, so an interrupted write never leaves a table that reads as valid.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from eval.figures import numeric, save_figure

# metric → whether larger is better
METRICS = {"probe_top1": True, "knn_top1": True, "loss": False}
RESULT_COLUMNS = ("probe_top1", "knn_top1", "loss", "steps", "stop_reason", "time_s")


def write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    done = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not done:
        return None
    return (max if METRICS[metric] else min)(done, key=lambda r: r[metric])


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "—"
    if key in ("probe_top1", "knn_top1") and isinstance(value, float):
        return f"{100 * value:.1f} %"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict[str, Any]], keys: list[str], metric: str, title: str) -> str:
    cols = ["trial", "status", *keys, *RESULT_COLUMNS, "error"]
    best = best_row(rows, metric)
    lines = [f"# Sweep `{title}`", "",
             f"Best by {metric}: " + (f"`{best['trial']}` ({_cell(best[metric], metric)})" if best else "none yet"), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [_cell(r["values"].get(c) if c in keys else r.get(c), c) for c in cols]
        if best is r:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(sweep_dir: Path, name: str, rows: list[dict[str, Any]], keys: list[str], metric: str) -> dict[str, Path]:
    """results.md / .csv / .json and METRIC.png (when a trial has the metric) in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    best = best_row(rows, metric)
    out = {"json": write_atomic(sweep_dir / "results.json", json.dumps(
        {"sweep": name, "metric": metric, "higher_is_better": METRICS[metric], "keys": keys,
         "best": best["trial"] if best else None, "trials": rows}, indent=2) + "\n")}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "status", *keys, *RESULT_COLUMNS, "error", "run_dir"])
    for r in rows:
        writer.writerow([r["trial"], r["status"], *(json.dumps(r["values"].get(k)) if isinstance(r["values"].get(k), list)
                                                  else r["values"].get(k) for k in keys),
                         *(r.get(c) for c in RESULT_COLUMNS), r.get("error") or "", r.get("run_dir") or ""])
    out["csv"] = write_atomic(sweep_dir / "results.csv", buf.getvalue())
    out["md"] = write_atomic(sweep_dir / "results.md", markdown(rows, keys, metric, name))
    if keys and best is not None:
        out["png"] = plot(rows, keys, metric, sweep_dir / f"{metric}.png")
    return out


def plot(rows: list[dict[str, Any]], keys: list[str], metric: str, path: Path) -> Path:
    """One panel per swept key: the metric of every finished trial against that key's value (log x for numeric
    values spanning ≥ 20×; categories in order of appearance otherwise)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if isinstance(r.get(metric), (int, float))]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    scale = 100 if metric in ("probe_top1", "knn_top1") else 1
    for ax, key in zip(axes[0], keys, strict=True):
        xs = [r["values"].get(key) for r in done]
        ys = [scale * r[metric] for r in done]
        if numeric(xs):
            ax.plot(xs, ys, "o", alpha=0.8)
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and min(xs) > 0 and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
        else:
            labels = list(dict.fromkeys(json.dumps(x) if isinstance(x, list) else str(x) for x in xs))
            pos = [labels.index(json.dumps(x) if isinstance(x, list) else str(x)) for x in xs]
            ax.plot(pos, ys, "o", alpha=0.8)
            ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel(key)
        ax.set_ylabel(metric + (" (%)" if scale == 100 else ""))
        ax.grid(alpha=0.3)
        if ys and all(math.isfinite(y) for y in ys):
            pad = max(1e-9, 0.05 * (max(ys) - min(ys)))
            ax.set_ylim(min(ys) - pad, max(ys) + pad)
    return save_figure(fig, path)
