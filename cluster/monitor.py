"""The driver while Ray Train runs: ``trainer.fit()`` in a thread; between polls the progress actor drained into the
metrics sink, ``workers.json`` kept current, and new checkpoints noticed in the run's storage."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.run_store import write_text_atomic


@dataclass
class FitOutcome:
    result: Any = None
    error: BaseException | None = None


def fit_while_polling(trainer: Any, poll: Callable[[], None], interval: float = 0.5) -> FitOutcome:
    """Run ``trainer.fit()`` in a thread, calling ``poll()`` every ``interval`` seconds while it runs."""
    outcome = FitOutcome()

    def fit() -> None:
        try:
            outcome.result = trainer.fit()
        except BaseException as exc:  # handed to the driver thread
            outcome.error = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=interval)
        poll()
    return outcome


class ProgressMonitor:
    """Moves the progress actor's metrics into the sink and its worker table into ``run_dir/workers.json``."""

    def __init__(self, progress: Any, sink: Any, run_dir: Path) -> None:
        self.progress, self.sink, self.run_dir = progress, sink, Path(run_dir)
        self.workers: dict[int, dict[str, Any]] = {}

    def poll(self) -> None:
        import ray

        self.sink.consume(*ray.get(self.progress.drain.remote()))
        current = ray.get(self.progress.worker_info.remote())
        if current != self.workers:  # restarted workers replace their entry
            write_text_atomic(self.run_dir / "workers.json",
                              json.dumps({str(k): v for k, v in sorted(current.items())}, indent=2))
            self.workers = current


class CheckpointWatcher:
    """New complete checkpoints of the run at ``store`` (local or a URL), listed at most every ``interval`` seconds
    (object-store listings cost requests)."""

    def __init__(self, store: Any, interval: float = 0.0) -> None:
        self.store, self.interval = store, interval
        self.listed: list[str] = store.checkpoints() if store.exists() else []  # the last listing, oldest first
        self.seen: set[str] = set(self.listed)
        self.last = 0.0

    def new(self, force: bool = False) -> list[str]:
        if not force and time.monotonic() - self.last < self.interval:
            return []
        self.last = time.monotonic()
        self.store.refresh()
        self.listed = self.store.checkpoints()
        fresh = [c for c in self.listed if c not in self.seen]
        self.seen.update(fresh)
        return fresh
