"""Driver-side progress: a Ray actor the rank-0 worker pushes metrics to, and the driver's view of them
(tqdm bar with step, loss, images/s and time left; ``metrics.jsonl`` in the run dir; the experiment trackers).

The actor outlives worker restarts, so it also counts how many times the worker group (re)started.
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

    def register_worker(self, rank: int, info: dict[str, Any]) -> None:
        """Each worker (and each restarted one) reports its node, host and PID."""
        self.workers[rank] = info

    def worker_info(self) -> dict[int, dict[str, Any]]:
        return dict(self.workers)

    def push(self, metrics: dict[str, Any]) -> None:
        self.events.append(metrics)

    def started(self) -> None:
        self.starts += 1

    def resumed(self, step: int) -> None:
        self.resumed_at.append(step)

    def drain(self) -> tuple[list[dict[str, Any]], int, list[int]]:
        events, self.events = self.events, []
        return events, self.starts, list(self.resumed_at)


class MetricsSink:
    """Appends metrics to ``run_dir/metrics.jsonl``, hands them to the trackers as ``train/KEY`` at their step;
    drives the bar."""

    def __init__(self, run_dir: Path, total_steps: int | None, show: bool = True, trackers: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self.trackers = trackers
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=not show)
        self.attempt = 0
        self.starts = 0
        self.resumed_at: list[int] = []
        self.last: dict[str, Any] = {}

    def consume(self, events: list[dict[str, Any]], starts: int, resumed_at: list[int]) -> None:
        self.starts, self.resumed_at = starts, resumed_at
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
