"""Probes of a run as Ray tasks on cluster resources (``eval.num_cpus``, ``eval.num_gpus``), not on the driver:
every k-th checkpoint while training (collected between polls) and the final checkpoint.

A periodic probe's checkpoint is pinned first: copied within the run's storage to ``PIN_DIR`` as soon as the driver
sees it, so Ray pruning the checkpoint before the task starts (a busy cluster) does not lose the probe; the pin is
removed once the task ends. The task resolves the probe's data where it runs and reads the checkpoint from the
run's storage (a private copy); data paths must be readable from every node (shared
storage or URLs; on one machine, local paths are). Each result records where it ran (node, host, PID, device).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from data_pipeline.builtin import resolve_builtin
from pretrain.config import RunConfig
from pretrain.run_store import RunStore

PIN_DIR = ".probe_pins"  # in the run's storage: copies of the checkpoints that periodic probes wait for


def probe_sources(cfg: RunConfig) -> tuple[str, str] | None:
    """(train, test) shards of the probe; None when the config names no held-out data."""
    d = cfg.data
    if d.train == "digits":
        return resolve_builtin(d.probe_train or "digits"), resolve_builtin(d.probe_test or "digits-holdout")
    if d.probe_test:
        return d.probe_train or d.train, d.probe_test
    return None


def probe_gpus(cfg: RunConfig) -> float:
    """``eval.num_gpus``, by default one GPU on a GPU cluster and none otherwise."""
    if cfg.eval.num_gpus is not None:
        return cfg.eval.num_gpus
    return 1.0 if cfg.cluster.gpus_per_worker > 0 else 0.0


def probe_checkpoint(run: dict[str, Any], checkpoint: str, periodic: bool) -> dict[str, Any]:
    """The body of the probe task: probe ``checkpoint`` (a path or URL) with the run's data and settings.

    Periodic probes keep every k-th checkpoint only (``(step // checkpoint_every) % k == 0``), and skip the
    baselines; for the others the result is ``{"step": s, "skipped": True}``."""
    import ray
    import torch

    from eval.run_probe import probe_run
    from pretrain.checkpoint import checkpoint_step
    from pretrain.run_store import local_checkpoint

    cfg = RunConfig.model_validate(run)
    sources = probe_sources(cfg)
    if sources is None:
        raise ValueError(f"run {cfg.name}: no data.probe_test to probe on")
    device = "cuda" if probe_gpus(cfg) > 0 and torch.cuda.is_available() else "cpu"
    with local_checkpoint(checkpoint, copy=True) as local:
        step = checkpoint_step(local)
        if periodic and (step // cfg.checkpoint_every) % cfg.eval.every_k_checkpoints:
            return {"step": step, "skipped": True}
        res = probe_run(local, *sources, baselines=() if periodic else tuple(cfg.eval.baselines), knn=cfg.eval.knn,
                        seed=cfg.seed, device=device)
    res.update(checkpoint=checkpoint, step=step, where={
        "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid(),
        "device": device})
    return res


class ProbeTasks:
    """Submits probe tasks for the checkpoints of the run at ``run_url`` and hands finished periodic results to
    ``on_result(result)`` (``on_error(checkpoint, reason)`` for a checkpoint that could not be probed, e.g. pruned
    before its pin was copied)."""

    def __init__(self, cfg: RunConfig, run_url: str, on_result: Callable[[dict], None],
                 on_error: Callable[[str, str], None]) -> None:
        import ray

        self.run = cfg.model_dump(mode="json")
        # "DEFAULT": outside any placement group this driver runs in (a sweep's Tune trial holds a tiny one that
        # would capture the task and could never fit it)
        self.task = ray.remote(probe_checkpoint).options(num_cpus=cfg.eval.num_cpus, num_gpus=probe_gpus(cfg),
                                                         max_retries=0, scheduling_strategy="DEFAULT")
        self.on_result, self.on_error = on_result, on_error
        self.run_url, self.store = run_url.rstrip("/"), RunStore(run_url)
        self.store.remove(PIN_DIR)  # pins left by a driver that died
        self.pending: dict[Any, tuple[str, str]] = {}  # task → (checkpoint, its pin)

    def submit(self, checkpoint: str) -> None:
        """Pin ``checkpoint`` (relative to the run) and start its periodic probe on the pin."""
        pin = f"{PIN_DIR}/{checkpoint.rsplit('/', 1)[-1]}"
        try:
            self.store.copy(checkpoint, pin)
        except (OSError, ValueError) as exc:  # pruned before the copy
            self.on_error(f"{self.run_url}/{checkpoint}", f"could not pin it: {exc}"[:300])
            return
        self.pending[self.task.remote(self.run, f"{self.run_url}/{pin}", True)] = (f"{self.run_url}/{checkpoint}", pin)

    def _unpin(self, pin: str) -> None:
        """Remove a pin; a storage error leaves it for the next driver's clean-up and does not stop the run."""
        try:
            self.store.remove(pin)
        except OSError as exc:
            print(f"bigbatch: warning: could not remove {self.run_url}/{pin}: {exc}", file=sys.stderr)

    def collect(self, wait: bool = False) -> None:
        """Hand over the finished periodic probes (all of them, waiting, with ``wait``)."""
        import ray

        if not self.pending:
            return
        done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=None if wait else 0)
        for ref in done:
            checkpoint, pin = self.pending.pop(ref)
            try:
                res = ray.get(ref)
            except (ray.exceptions.RayError, OSError, ValueError, RuntimeError) as exc:
                self.on_error(checkpoint, str(exc).strip().splitlines()[-1][:300])
                continue
            finally:
                self._unpin(pin)
            if not res.get("skipped"):
                self.on_result({**res, "checkpoint": checkpoint})

    def final(self, checkpoint: str) -> dict[str, Any]:
        """Probe the final checkpoint (with the baselines) and wait for it; its errors are raised here."""
        import ray

        return ray.get(self.task.remote(self.run, checkpoint, False))
