"""A run's report.md: what was run, how fast, how the loss went (PNG), and what the probe says against baselines."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from eval.figures import save_figure


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics: list[dict], path: Path) -> Path | None:
    steps = [(m["step"], m["loss"]) for m in metrics if "loss" in m and "step" in m]
    if not steps:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(*zip(*steps, strict=True), lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    summary = json.loads((run_dir / "train_summary.json").read_text()) if (run_dir / "train_summary.json").exists() else {}
    probe = json.loads((run_dir / "probe.json").read_text()) if (run_dir / "probe.json").exists() else {}
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if "images_per_s" in m]
    lines = [f"# bigbatch run `{cfg.get('name', run_dir.name)}`", ""]
    loss = cfg.get("loss", {}).get("name") if cfg.get("method") == "simclr" else cfg.get("method")
    lines += ["| | |", "|---|---|",
              f"| method | {cfg.get('method')} ({loss}) |",
              f"| encoder | {cfg.get('model', {}).get('encoder')} |",
              f"| data | {cfg.get('data', {}).get('train')} at {cfg.get('data', {}).get('image_size')} px |",
              f"| global batch × steps | {cfg.get('batch_size')} × {summary.get('final', {}).get('step', '?')} |",
              f"| workers | {cfg.get('cluster', {}).get('workers')} × {cfg.get('cluster', {}).get('cpus_per_worker')} CPU, "
              f"{cfg.get('cluster', {}).get('gpus_per_worker')} GPU |",
              f"| wall time | {summary.get('wall_time_s', 0):.0f} s |",
              f"| images/s (median of log windows) | {_median([m['images_per_s'] for m in steps]):.0f} |",
              f"| data-wait fraction (median) | {_pct(_median([m['data_wait_fraction'] for m in steps]))} |",
              f"| restarts | {summary.get('restarts', 0)} (resumed at steps {summary.get('resumed_at_steps', [])}) |",
              f"| final loss | {summary.get('final', {}).get('loss', float('nan')):.4f} |", ""]
    if plot_loss(metrics, run_dir / "loss_curve.png"):
        lines += ["![loss curve](loss_curve.png)", ""]
    if probe:
        lines += [f"## Linear probe (train `{probe['train']}`, test `{probe['test']}`)", "",
                  "| representation | probe top-1 | probe top-5 | kNN top-1 | L2 |", "|---|---|---|---|---|"]
        rows = ([("this run", probe["method"])] if "method" in probe else []) + list(probe["baselines"].items())
        for name, r in rows:
            lines.append(f"| {name} | {_pct(r['top1'])} | {_pct(r['top5'])} | {_pct(r.get('knn_top1'))} | {r['l2']:.0e} |")
        lines.append("")
        if "where" in probe:
            w = probe["where"]
            lines += [f"Probed at step {probe.get('step', '?')} on {w['host']} ({w['device']}, Ray node "
                      f"{w['node_id'][:12]}).", ""]
    artifacts = sorted((run_dir / "artifacts").glob("*.png")) if (run_dir / "artifacts").exists() else []
    if artifacts:
        lines += ["## Samples", ""] + [f"![{p.stem}](artifacts/{p.name})" for p in artifacts[-3:]] + [""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")
