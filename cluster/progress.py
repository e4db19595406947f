"""Driver-side progress: a Ray actor the rank-0 worker pushes metrics to, and the driver's view of them
(tqdm bar with step, loss, images/s and time left; ``metrics.jsonl`` in the run dir; the experiment trackers).

The actor outlives worker restarts, so it also counts how many times the worker group (re)started, with which world
size and from which step: :func:`resizes` turns that into the run's resize records.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm


@ray.remote(num_cpus=0)
class ProgressActor:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.starts = 0
        self.resumed_at: list[int] = []
        self.workers: dict[int, dict[str, Any]] = {}
        self.groups: list[dict[str, int]] = []   # every worker-group start: {"world_size", "step" resumed from}

    def register_worker(self, rank: int, info: dict[str, Any]) -> None:
        """Each worker (and each restarted one) reports its node, host and PID."""
        self.workers[rank] = info
        self._forget_ranks_beyond()

    def worker_info(self) -> dict[int, dict[str, Any]]:
        return dict(self.workers)

    def push(self, metrics: dict[str, Any]) -> None:
        self.events.append(metrics)

    def started(self, world_size: int = 0) -> None:
        """Rank 0 of a (re)started worker group, before it restores a checkpoint."""
        self.starts += 1
        self.groups.append({"world_size": world_size, "step": 0})
        self._forget_ranks_beyond()

    def _forget_ranks_beyond(self) -> None:
        """A smaller group's table keeps only its ranks."""
        if self.groups and self.groups[-1]["world_size"]:
            self.workers = {r: i for r, i in self.workers.items() if r < self.groups[-1]["world_size"]}

    def resumed(self, step: int) -> None:
        self.resumed_at.append(step)
        if self.groups:
            self.groups[-1]["step"] = step

    def drain(self) -> tuple[list[dict[str, Any]], int, list[int], list[dict[str, int]]]:
        events, self.events = self.events, []
        return events, self.starts, list(self.resumed_at), [dict(g) for g in self.groups]


SHRANK = "worker group restarted with fewer workers after a failure (a worker or node lost)"
GREW = "worker group restarted with more workers (resources became available: elastic scale-up)"


def resizes(groups: list[dict[str, int]]) -> list[dict[str, Any]]:
    """Each change of world size between consecutive worker-group starts: step resumed from, old W, new W, why."""
    return [{"step": cur["step"], "old_world_size": prev["world_size"], "new_world_size": cur["world_size"],
             "why": SHRANK if cur["world_size"] < prev["world_size"] else GREW}
            for prev, cur in zip(groups, groups[1:], strict=False) if cur["world_size"] != prev["world_size"]]


class MetricsSink:
    """Appends metrics to ``run_dir/metrics.jsonl``, hands them to the trackers as ``train/KEY`` at their step;
    drives the bar."""

    def __init__(self, run_dir: Path, total_steps: int | None, show: bool = True, trackers: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self.trackers = trackers
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=not show)
        self.starts = 0
        self.resumed_at: list[int] = []
        self.groups: list[dict[str, int]] = []
        self.last: dict[str, Any] = {}

    def consume(self, events: list[dict[str, Any]], starts: int, resumed_at: list[int],
                groups: list[dict[str, int]] | None = None) -> None:
        for g in (groups or [])[len(self.groups):]:
            self.event("workers", world_size=g["world_size"], resumed_from_step=g["step"])
        self.starts, self.resumed_at, self.groups = starts, resumed_at, list(groups or [])
        for m in events:
            total = m.get("total_steps")
            if total and self.bar.total != total:
                self.bar.total = total
            record = {"time": time.time(), "attempt": max(0, starts - 1), **m}
            self.jsonl.write(json.dumps(record) + "\n")
            if self.trackers is not None:
                self.trackers.log_metrics({f"train/{k}": v for k, v in m.items() if k not in ("step", "total_steps")},
                                          m["step"])
            self.bar.n = m["step"]
            self.bar.set_postfix(loss=f"{m.get('loss', float('nan')):.4f}", img_s=f"{m.get('images_per_s', 0):.0f}")
            self.bar.refresh()
            self.last = m

    def event(self, kind: str, **fields: Any) -> None:
        self.jsonl.write(json.dumps({"time": time.time(), "event": kind, **fields}) + "\n")

    def close(self) -> None:
        self.bar.close()
        self.jsonl.close()
