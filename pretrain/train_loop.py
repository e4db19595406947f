"""The Ray Train worker function: the only place in pretrain/ that knows Ray.

Each worker: resolve rank/world/device from Ray Train's context, restore from ``ray.train.get_checkpoint()``
(a restarted worker group or a rerun of the same run name), run the Ray-free ``Trainer`` with hooks that
push metrics to the driver's progress actor and report checkpoints through ``ray.train.report``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from pretrain.config import RunConfig
from pretrain.trainer import Trainer, WriteCheckpoint


class RayHooks:
    def __init__(self, rank: int, progress: Any | None) -> None:
        self.rank = rank
        self.progress = progress

    def log(self, metrics: dict[str, Any]) -> None:
        if self.rank == 0 and self.progress is not None:
            self.progress.push.remote(metrics)

    def checkpoint(self, write: WriteCheckpoint, metrics: dict[str, Any]) -> None:
        # Every rank writes its part (rank 0: state; all: RNG); Ray merges the parts into one directory in storage
        # and registers the checkpoint only once every rank's upload completed.
        with tempfile.TemporaryDirectory(prefix="bigbatch-ckpt-") as tmp:
            write(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Entry point given to ``TorchTrainer(train_loop_per_worker=...)``."""
    cfg = RunConfig.model_validate(config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.cluster.gpus_per_worker > 0 else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    progress = config.get("progress")
    if progress is not None:
        progress.register_worker.remote(rank, {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                                               "host": socket.gethostname(), "device": str(device)})
        if rank == 0:
            progress.started.remote(world)
    trainer = Trainer(cfg, rank=rank, world_size=world, device=device, hooks=RayHooks(rank, progress))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(Path(d))
        if rank == 0 and progress is not None:
            progress.resumed.remote(trainer.step)
    return trainer.fit()
