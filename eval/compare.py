"""Several runs side by side: method, loss, batch, steps, time, probe and kNN top-1."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from data_pipeline.errors import UserInputError
from pretrain.config import from_stored


def run_row(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise UserInputError(f"{run_dir}: not a bigbatch run directory (no config.yaml)")
    try:
        cfg = from_stored(yaml.safe_load(cfg_path.read_text()))
    except (yaml.YAMLError, ValueError, AttributeError) as exc:
        raise UserInputError(f"{cfg_path}: not a readable bigbatch config: {' '.join(str(exc).split())}") from exc
    summary, probe = _read_json(run_dir / "train_summary.json"), _read_json(run_dir / "probe.json")
    m = probe.get("method", {})
    return {"run": run_dir.name, "method": cfg.method, "loss": cfg.variant, "batch": cfg.batch_size,
            "steps": summary.get("final", {}).get("step"), "time_s": summary.get("wall_time_s"),
            "probe_top1": m.get("top1"), "knn_top1": m.get("knn_top1")}


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when the file does not exist (the run stopped before writing it)."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc})") from exc


def table(rows: list[dict]) -> str:
    head = f"{'run':28s} {'method':7s} {'loss':18s} {'batch':>6s} {'steps':>6s} {'time s':>7s} {'probe':>7s} {'kNN':>7s}"
    out = [head]
    for r in rows:
        pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        out.append(f"{r['run'][:28]:28s} {r['method']:7s} {r['loss']:18s} {r['batch']:>6} {r['steps'] or '—':>6} "
                   f"{(r['time_s'] or 0):7.0f} {pct(r['probe_top1']):>7s} {pct(r['knn_top1']):>7s}")
    return "\n".join(out)
