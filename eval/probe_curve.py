"""A run's probe accuracy against its wall time: every retained checkpoint probed after training (so no probe
shares the cores with the training it measures), the points kept in ``probe_curve.json`` in the run directory.

A checkpoint at step s is placed at t(s) − t₀ seconds: t(s) the wall clock of step s, linearly interpolated between
the metrics.jsonl lines around s (for a step logged twice, as after a resume, its last time); t₀ the run's first
``start`` event, so the time includes the run's start-up like the run's ``wall_time_s`` does.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.errors import UserInputError
from pretrain.run_store import RunStore, is_url, local_checkpoint, write_text_atomic

CURVE_FILE = "probe_curve.json"


def step_clock(lines: list[dict[str, Any]]) -> Callable[[int], float]:
    """Seconds since the run's first start event at which step s was reached (see the module docstring)."""
    starts = [m["time"] for m in lines if m.get("event") == "start"]
    last: dict[int, float] = {}
    for m in lines:
        if "step" in m and "loss" in m and "time" in m:
            last[int(m["step"])] = float(m["time"])
    if not starts or not last:
        raise ValueError("metrics.jsonl has no start event or no logged step")
    steps = sorted(last)
    times = np.maximum.accumulate([last[s] for s in steps])  # a resumed step's later time keeps t(s) non-decreasing
    t0 = min(starts)
    return lambda s: float(np.interp(s, steps, times)) - t0


def _metrics(store: RunStore) -> list[dict[str, Any]]:
    text = store.read_text("metrics.jsonl")
    if text is None:
        raise UserInputError(f"{store.url}: not a bigbatch run directory (no metrics.jsonl)")
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a killed writer: the others still place the steps
    return out


def probe_curve(run: str | Path, train: str, test: str, *, knn: bool = True, seed: int = 0, device: str = "cpu",
                on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Probe every retained checkpoint of ``run`` (local or a URL) on ``train``/``test``; the curve, oldest first:
    ``{"train", "test", "points": [{"checkpoint", "step", "time_s", "probe_top1", "probe_top5", "knn_top1"}]}``."""
    from eval.run_probe import probe_run
    from pretrain.checkpoint import checkpoint_step

    store = RunStore(run)
    try:
        clock = step_clock(_metrics(store))
    except ValueError as exc:
        raise UserInputError(f"{store.url}/metrics.jsonl: cannot place checkpoints in time: {exc}") from exc
    checkpoints = store.checkpoints()
    if not checkpoints:
        raise UserInputError(f"{store.url}: the run has no checkpoint to probe")
    final = _final_probe(store, str(train), str(test), seed, knn)
    points = []
    for rel in checkpoints:
        with local_checkpoint(f"{store.url}/{rel}") as local:
            step = checkpoint_step(local)
            name = rel.rsplit("/", 1)[-1]
            res = final[1] if final and final[0] == name else \
                probe_run(local, train, test, knn=knn, seed=seed, device=device)["method"]
        point = {"checkpoint": rel, "step": step, "time_s": round(clock(step), 2), "probe_top1": res["top1"],
                 "probe_top5": res["top5"], "knn_top1": res.get("knn_top1")}
        points.append(point)
        if on_point:
            on_point(point)
    points.sort(key=lambda p: p["step"])
    return {"train": str(train), "test": str(test), "seed": seed, "points": points}


def _final_probe(store: RunStore, train: str, test: str, seed: int, knn: bool) -> tuple[str, dict] | None:
    """(checkpoint dir name, results) of the run's ``probe.json`` when it probed on the same data with the same seed
    (and has kNN if asked): that checkpoint is not probed again."""
    text = store.read_text("probe.json")
    try:
        done = json.loads(text) if text else {}
        same = (done["train"], done["test"], done["seed"]) == (train, test, seed)
        method, name = done["method"], str(done["checkpoint"]).rstrip("/").rsplit("/", 1)[-1]
    except (ValueError, KeyError, TypeError):
        return None
    return (name, method) if same and (not knn or method.get("knn_top1") is not None) else None


def write_curve(run: str | Path, curve: dict[str, Any]) -> str:
    """Put ``curve`` in the run as ``probe_curve.json`` (a temp name, then renamed); its location."""
    text = json.dumps(curve, indent=2)
    store = RunStore(run)
    if not is_url(store.url):
        write_text_atomic(Path(store.root) / CURVE_FILE, text)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / CURVE_FILE).write_text(text)
            store.upload(Path(tmp) / CURVE_FILE, CURVE_FILE)
    return f"{store.url}/{CURVE_FILE}"


def read_curve(run: str | Path) -> list[dict[str, Any]]:
    """The points of the run's ``probe_curve.json``; a run without one is a user error saying how to make it."""
    store = RunStore(run)
    text = store.read_text(CURVE_FILE)
    if text is None:
        raise UserInputError(f"{store.url}: no {CURVE_FILE}; make it with `bigbatch probe {store.url} "
                             "--every-checkpoint --train SHARDS --test SHARDS`")
    try:
        return json.loads(text)["points"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{store.url}/{CURVE_FILE}: not a probe curve ({exc})") from exc
