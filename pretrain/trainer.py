"""The per-worker training loop, free of Ray: stream → method.train_step → logs and checkpoints.

The same loop runs inside a Ray Train worker (pretrain/train_loop.py supplies Ray-backed hooks) and in one
plain process (``LocalHooks``), which is how `bigbatch bench train` gets its side-by-side baseline.
Resume contract: a checkpoint after step s stores the stream position (epoch, batches consumed in that
epoch); the resumed loop asks the stream for exactly the batches the uninterrupted loop would have read.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from data_pipeline.builtin import resolve_builtin
from data_pipeline.stream import VIEW_KEYS, StreamSpec, make_loader
from pretrain.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    seed_rank_rng,
    set_rng_state,
)
from pretrain.config import RunConfig
from pretrain.methods import build_method
from pretrain.methods.base import PretrainMethod
from pretrain.precision import configure_backends
from pretrain.view_ramp import ViewRamp, resize_views

WriteCheckpoint = Callable[[Path], None]
BUDGET_CHECK_S = 10.0  # the longest a run goes between checks of its time budget (each one a broadcast + sync)


class TrainerHooks(Protocol):
    def log(self, metrics: dict[str, Any]) -> None:
        """Called on every rank at log steps (rank 0's call is the one to record)."""

    def checkpoint(self, write: WriteCheckpoint, metrics: dict[str, Any]) -> None:
        """Called on every rank at checkpoint steps; ``write(dir)`` writes this rank's part into ``dir``."""


def stream_spec(cfg: RunConfig, world_size: int, num_views: int, augment: bool = True, pin_memory: bool = False):
    """The training stream of one rank: its share of the global batch; augmented views unless the method
    (VAE, GAN) models the images themselves; page-locked batches when they go to a CUDA device."""
    d = cfg.data
    return StreamSpec(source=resolve_builtin(d.train), batch_size=cfg.batch_size // world_size, num_views=num_views,
                      augment=augment, image_size=d.view_size or d.image_size, blur=d.blur, mode=d.mode, seed=cfg.seed, shuffle=True,
                      shuffle_buffer=d.shuffle_buffer, num_workers=d.loader_workers,
                      max_bad_fraction=d.max_bad_fraction, equalize=True, pin_memory=pin_memory, lanes=d.lanes,
                      global_scale=d.global_scale, color_strength=d.color_strength, local_views=d.local_views,
                      local_size=d.local_size, local_scale=d.local_scale)


def sync_batchnorm(module: torch.nn.Module, device: torch.device, world_size: int, enabled: bool = True) -> torch.nn.Module:
    """BatchNorm → SyncBatchNorm on multi-GPU runs, through timm's converter: it keeps the activation and dropout of
    timm's fused BatchNormAct2d (torch's converter makes it a bare SyncBatchNorm that never applies them)."""
    if not (enabled and device.type == "cuda" and world_size > 1):
        return module
    from timm.layers import convert_sync_batchnorm
    return convert_sync_batchnorm(module)


def ddp_wrapper(device: torch.device) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """DDP when a process group with >1 ranks is up, identity otherwise."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return lambda m: m
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [device.index] if device.type == "cuda" else None
    return lambda m: DDP(m, device_ids=ids, broadcast_buffers=False)


Metric = float | torch.Tensor  # a number, or a 0-d tensor still on the device


def _reduce_over_ranks(mean: dict[str, Metric], total: dict[str, Metric], device: torch.device) -> dict[str, float]:
    """One all-reduce and one host read: ``mean`` entries averaged over ranks, ``total`` entries summed."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    keys_m, keys_t = sorted(mean), sorted(total)
    t = torch.stack([torch.as_tensor(v, device=device).detach().to(torch.float64).reshape(())
                     for v in [*(mean[k] for k in keys_m), *(total[k] for k in keys_t)]])
    if world > 1:
        t[: len(keys_m)] /= world
        dist.all_reduce(t)
    return dict(zip(keys_m + keys_t, t.tolist(), strict=True))


def to_device(x: torch.Tensor, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """Move a batch of images to the device, NHWC when ``memory_format`` is channels_last (4-d tensors only)."""
    if x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=memory_format)
    return x.to(device, non_blocking=True)


class Trainer:
    """Builds the method and stream for (rank, world_size) and runs ``cfg.steps`` optimiser steps."""

    def __init__(self, cfg: RunConfig, *, rank: int, world_size: int, device: torch.device, hooks: TrainerHooks) -> None:
        self.cfg, self.rank, self.world_size, self.device, self.hooks = cfg, rank, world_size, device, hooks
        threads = cfg.cluster.threads_per_worker or max(1, int(cfg.cluster.cpus_per_worker))
        torch.set_num_threads(threads)
        if device.type == "cpu":
            # Saturated sigmoids/softmaxes send denormal gradients through backward, which x86 cores process far
            # more slowly (docs/results.md): flush them to zero.
            torch.set_flush_denormal(True)
        torch.manual_seed(cfg.seed * 1000 + rank)
        configure_backends(device, precision=cfg.precision, tf32=cfg.tf32, deterministic=cfg.deterministic)
        method = sync_batchnorm(build_method(cfg), device, world_size, cfg.model.sync_batchnorm)
        # NHWC: 4-d weights only, before the DDP wrap so its buckets match the gradients' layout
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.method: PretrainMethod = method.to(device, memory_format=self.memory_format)
        self.spec = stream_spec(cfg, world_size, method.num_views, augment=method.augment,
                                pin_memory=device.type == "cuda")
        self.steps_per_epoch = len(self._loader(epoch=0, start_batch=0))
        if self.steps_per_epoch == 0:
            raise ValueError(f"{cfg.data.train}: the stream gives 0 steps per epoch at batch {cfg.batch_size}")
        self.total_steps = cfg.steps or math.ceil(cfg.epochs * self.steps_per_epoch)
        self.method.configure(self.total_steps, device, ddp_wrapper(device))
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.train_seconds = 0.0  # training time of earlier attempts, up to the checkpoint resumed from
        self._fit_t0, self._fit_step0, self._next_budget_check = time.perf_counter(), 0, 0
        self._budget_clock = (0, 0.0, 0.0)  # at the last check: (step, fraction of the budget spent, fraction per step)
        self._position = 0.0  # schedule_by=budget: the lr schedule's position so far
        if cfg.schedule_by == "budget":
            for schedule in self.method.schedulers.values():
                schedule.clock = self._schedule_position
        d = cfg.data
        self.view_ramp = None if d.view_size_start is None else \
            ViewRamp(d.view_size_start, d.view_size or d.image_size, d.view_ramp)

    def _loader(self, epoch: int, start_batch: int):
        return make_loader(self.spec, rank=self.rank, world_size=self.world_size, epoch=epoch, start_batch=start_batch)

    def restore(self, checkpoint_dir: Path) -> None:
        """Resume from a checkpoint written with any supported world size: the stream position (epoch, global
        step in it) and the optimiser state are global; a rank's RNG state carries over only when the world size is
        the same, otherwise (or when the rank had no file) it is re-derived from (seed, step, rank)."""
        state, rng = load_checkpoint(checkpoint_dir, self.rank)
        try:
            self.method.load_state(state["method"])
        except (KeyError, ValueError, RuntimeError) as e:  # another model, loss or optimiser layout
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{checkpoint_dir}: does not fit this run's model or optimiser ({first}); resume it "
                                  "with the config it was written with, or start a new run") from e
        self.step = state["step"]
        self.epoch, self.batch_in_epoch = state["stream"]["epoch"], state["stream"]["batch"]
        extra = state.get("extra", {})
        self.train_seconds = float(extra.get("train_seconds", 0.0))
        self.resumed_world_size = int(extra.get("world_size", self.world_size))
        if rng is not None and self.resumed_world_size == self.world_size:
            set_rng_state(rng, self.device)
        else:
            seed_rank_rng(self.cfg.seed, self.step, self.rank)

    def _write(self, directory: Path) -> None:
        if self.rank == 0:  # samples / reconstructions of this checkpoint's model travel with it
            self.method.save_artifacts(Path(directory) / "artifacts", self.step)
        save_checkpoint(directory, rank=self.rank, method_state=self.method.state() if self.rank == 0 else None,
                        step=self.step, stream={"epoch": self.epoch, "batch": self.batch_in_epoch},
                        config=self.cfg.model_dump(mode="json"), device=self.device,
                        extra={"train_seconds": self._elapsed(), "world_size": self.world_size})

    def _elapsed(self) -> float:
        return self.train_seconds + time.perf_counter() - self._fit_t0

    def _budget_spent(self) -> bool:
        """True once ``budget_minutes`` of training time passed. Rank 0's clock decides and broadcasts the decision,
        so every rank leaves the loop after the same step (a rank waiting in a collective alone would hang DDP).
        Rank 0 also sets the step of the next check: at most ``BUDGET_CHECK_S`` of training later (from its mean
        step time), sooner as the budget nears, so a run stops within about a step of its budget."""
        if self.cfg.budget_minutes is None:
            return False
        budget = 60.0 * self.cfg.budget_minutes
        remaining = budget - self._elapsed()
        done = self.step - self._fit_step0
        per_step = (time.perf_counter() - self._fit_t0) / done if done else math.inf
        gap = max(1, int(min(remaining, BUDGET_CHECK_S) / per_step)) if remaining > 0 else 1
        at, before, _ = self._budget_clock  # the schedule's clock goes at the speed since the last check
        rate = max(0.0, (1.0 - remaining / budget - before) / (self.step - at)) if self.step > at else 0.0
        decision = torch.tensor([float(remaining <= 0), float(gap), 1.0 - remaining / budget, rate],
                                dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(decision, src=0)
        spent, gap, fraction, rate = decision.tolist()  # a host-device sync: once per check, not per step
        self._next_budget_check = self.step + int(gap)
        self._budget_clock = (self.step, fraction, rate)
        if self.cfg.schedule_by == "budget":
            for schedule in self.method.schedulers.values():
                schedule.refresh()
        return bool(spent)

    def _schedule_position(self, step: int) -> float:
        """schedule_by=budget: the lr schedule's position at ``step`` = total_steps · max(step / total_steps, f), f the
        fraction of the budget spent, extrapolated from the last check at the speed since the check before (rank 0's
        clock, broadcast, so every DDP rank steps with the same lr)."""
        at, fraction, rate = self._budget_clock
        self._position = max(self._position, float(step), (fraction + (step - at) * rate) * self.total_steps)
        return self._position  # never back: a check that finds the extrapolation ahead holds the lr until time catches up

    def _view_side(self) -> int | None:
        """The global views' side for the coming step under progressive resizing (None: off)."""
        if self.view_ramp is None:
            return None
        position = self._schedule_position(self.step) if self.cfg.schedule_by == "budget" else float(self.step)
        return self.view_ramp.side(position / self.total_steps)

    def _expected_steps(self) -> int:
        """The step the run will end at: total_steps, or by schedule_by=budget the step the budget runs out at on the
        clock's speed (at most total_steps), the length of the progress bar."""
        at, fraction, rate = self._budget_clock
        if self.cfg.schedule_by != "budget" or rate <= 0:
            return self.total_steps
        left = (1.0 - fraction) / rate - (self.step - at)
        return min(self.total_steps, self.step + max(0, math.ceil(left)))

    def fit(self, resume_from: Path | None = None) -> dict[str, Any]:
        """Train from the current position (0, or what ``restore``/``resume_from`` set) to ``total_steps``, or until
        the time budget is spent. The last log carries ``stop_reason``: "steps" or "budget"."""
        if resume_from is not None:
            self.restore(resume_from)
        self.method.train()
        cfg, last = self.cfg, {}
        self._fit_t0, self._fit_step0 = time.perf_counter(), self.step
        if self._budget_spent():  # resumed after the budget ran out: the checkpoint resumed from is the final one
            last = {"step": self.step, "epoch": self.epoch, "total_steps": self.total_steps, "stop_reason": "budget"}
            self.hooks.log(dict(last))
            return last
        window_t0, window_wait, window_steps = time.perf_counter(), 0.0, 0
        key_hashes: list[str] = []
        while self.step < self.total_steps:
            loader = self._loader(self.epoch, self.batch_in_epoch)
            it = iter(loader)
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                batch = next(it, None)
                if batch is None:  # the epoch ran out: the next one starts at its first batch
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    break
                window_wait += time.perf_counter() - t0
                if cfg.log_batch_keys:
                    key_hashes.append(_global_keys_hash(batch["key"]))
                for name in VIEW_KEYS:
                    if name in batch:
                        batch[name] = to_device(batch[name], self.device, self.memory_format)
                if (side := self._view_side()) is not None:
                    batch["views"] = resize_views(batch["views"], side)
                metrics = self.method.train_step(batch, self.step)  # device tensors: read at log steps only
                self.step += 1
                self.batch_in_epoch += 1
                window_steps += 1
                stop = (cfg.budget_minutes is not None and self.step < self.total_steps
                        and self.step >= self._next_budget_check and self._budget_spent())
                final = stop or self.step == self.total_steps
                if self.step % cfg.log_every == 0 or final:
                    if self.device.type == "cuda":  # the window's kernels finish inside the window (log steps only)
                        torch.cuda.synchronize(self.device)
                    elapsed = time.perf_counter() - window_t0
                    stats = getattr(loader, "stats", {}) or {}
                    last = _reduce_over_ranks(
                        {**metrics, "data_wait_fraction": window_wait / elapsed},
                        {"epoch_bad_samples": _bad_total(stats), "epoch_repeated_samples": stats.get("repeated", 0),
                         "epoch_dropped_samples": stats.get("dropped", 0)}, self.device)
                    last.update(step=self.step, epoch=self.epoch, total_steps=self._expected_steps(),
                                images_per_s=cfg.batch_size * window_steps / elapsed,
                                **({"view_size": side} if side is not None else {}),
                                **({"stop_reason": "budget" if stop else "steps"} if final else {}),
                                **({"batch_keys": key_hashes} if cfg.log_batch_keys else {}))
                    key_hashes = []
                    self.hooks.log(dict(last))
                    window_t0, window_wait, window_steps = time.perf_counter(), 0.0, 0
                if self.step % cfg.checkpoint_every == 0 or final:
                    self.hooks.checkpoint(self._write, dict(last, step=self.step))
                if stop:
                    return last
        return last


def _global_keys_hash(keys: list[str]) -> str:
    """SHA-1 of the global batch's sample keys (all ranks' keys in rank order; gathered when W > 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, list(keys))
        keys = [k for part in parts for k in part]
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]


def _bad_total(stats: dict[str, Any]) -> int:
    """Bad samples of every kind so far this epoch (``stats["bad"]``: kind → count, data_pipeline/badinput.py)."""
    return int(sum(stats.get("bad", {}).values()))


class LocalHooks:
    """Hooks for one plain process: metrics kept in memory, checkpoints in ``run_dir/checkpoints``."""

    def __init__(self, run_dir: Path, num_to_keep: int = 2, on_log: Callable[[dict], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.num_to_keep = num_to_keep
        self.logs: list[dict[str, Any]] = []
        self.on_log = on_log

    def log(self, metrics: dict[str, Any]) -> None:
        self.logs.append(metrics)
        if self.on_log:
            self.on_log(metrics)

    def checkpoint(self, write: WriteCheckpoint, metrics: dict[str, Any]) -> None:
        root = self.run_dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".partial-"))
        write(tmp)
        final = root / f"checkpoint_{metrics['step']:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob("checkpoint_*"))[: -self.num_to_keep]:
            shutil.rmtree(old, ignore_errors=True)


def run_single_process(cfg: RunConfig, run_dir: Path, device: str = "cpu", resume: bool = True) -> tuple[Trainer, LocalHooks]:
    """The training loop in this process, world size 1, no Ray (the baseline of `bigbatch bench train`)."""
    hooks = LocalHooks(run_dir, cfg.cluster.num_to_keep)
    trainer = Trainer(cfg, rank=0, world_size=1, device=torch.device(device), hooks=hooks)
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("checkpoint_*"))
    trainer.fit(ckpts[-1] if (resume and ckpts) else None)
    return trainer, hooks
