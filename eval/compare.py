"""Several runs side by side: method, loss, batch, steps, time, probe and kNN top-1."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.errors import UserInputError
from pretrain.config import RunConfig, from_stored
from pretrain.run_store import RunStore


def run_row(run_dir: str | Path, keys: tuple[str, ...] = (), absent: Counter | None = None) -> dict:
    """One run's row; ``run_dir`` is a local path or a URL (s3://bucket/runs/NAME). ``keys``: dotted config keys
    (``optim.lr``) added to the row with the run's values. A key this run's config lacks is an error, or, given the
    counter ``absent``, None in the row and counted there (``loss.num_negatives`` of a ranking-loss run)."""
    store = RunStore(run_dir)
    text = store.read_text("config.yaml")
    if text is None:
        raise UserInputError(f"{run_dir}: not a bigbatch run directory (no config.yaml)")
    try:
        cfg = from_stored(yaml.safe_load(text))
    except (yaml.YAMLError, ValueError, AttributeError) as exc:
        raise UserInputError(f"{run_dir}/config.yaml: not a readable bigbatch config: {' '.join(str(exc).split())}") from exc
    summary, probe = (_read_json(store, f) for f in ("train_summary.json", "probe.json"))
    m = probe.get("method", {})
    row = {"run": store.url.rsplit("/", 1)[-1], "method": cfg.method, "loss": cfg.variant, "batch": cfg.batch_size,
           "steps": summary.get("final", {}).get("step"), "time_s": summary.get("wall_time_s"),
           "probe_top1": m.get("top1"), "knn_top1": m.get("knn_top1")}
    for k in keys:
        if k in row:
            continue
        try:
            row[k] = config_value(cfg, k)
        except UserInputError:
            if absent is None:
                raise
            absent[k] += 1
            row[k] = None
    return row


def rows_of(runs: list[str], keys: tuple[str, ...] = ()) -> list[dict]:
    """The runs' rows; a key may be missing from some runs' configs (None there), not from all of them."""
    absent: Counter = Counter()
    rows = [run_row(r, keys, absent) for r in runs]
    for k in keys:
        if rows and absent[k] == len(rows):
            raise UserInputError(f"{k}: not a config key of any of these runs (see `bigbatch pretrain --print-config`)")
    return rows


def config_value(cfg: RunConfig, key: str) -> Any:
    """The value of dotted ``key`` in ``cfg``; a key the config does not have is a user error naming it."""
    node: Any = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            raise UserInputError(f"{key}: not a config key (see `bigbatch pretrain --print-config`)")
        node = getattr(node, part)
    return node.model_dump(mode="json") if hasattr(node, "model_dump") else node


def _read_json(store: RunStore, name: str) -> dict:
    """The JSON object in the run's file ``name``; {} when it does not exist (the run stopped before writing it)."""
    text = store.read_text(name)
    if text is None:
        return {}
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserInputError(f"{store.url}/{name}: not valid JSON ({exc})") from exc


def table(rows: list[dict], keys: list[str] | tuple[str, ...] = ()) -> str:
    """A fixed-width table of ``rows``, with a column per extra config key."""
    head = f"{'run':28s} {'method':7s} {'loss':18s} {'batch':>6s} {'steps':>6s} {'time s':>7s} {'probe':>7s} {'kNN':>7s}"
    out = [head + "".join(f" {k:>14s}" for k in keys)]
    for r in rows:
        pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        out.append(f"{r['run'][:28]:28s} {r['method']:7s} {r['loss']:18s} {r['batch']:>6} {r['steps'] or '—':>6} "
                   f"{(r['time_s'] or 0):7.0f} {pct(r['probe_top1']):>7s} {pct(r['knn_top1']):>7s}"
                   + "".join(f" {str(r.get(k)):>14s}" for k in keys))
    return "\n".join(out)
