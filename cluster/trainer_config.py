"""The run configuration as Ray Train's ``TorchTrainer``: scaling, backend, storage, failures, checkpoints kept."""

from __future__ import annotations

from typing import Any

from pretrain.config import RunConfig


def build_trainer(cfg: RunConfig, storage: str, progress: Any):
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig

    from cluster.loopback import LoopbackTorchConfig
    from cluster.ray_failures import FailFastTorchTrainer
    from pretrain.train_loop import train_func

    c = cfg.cluster
    use_gpu = c.gpus_per_worker > 0
    resources = {"CPU": c.cpus_per_worker, **({"GPU": c.gpus_per_worker} if use_gpu else {})}
    return FailFastTorchTrainer(  # a user error in a worker ends the run at once (no retries)
        train_func,
        train_loop_config={"run": cfg.model_dump(mode="json"), "progress": progress},
        # embedded: every worker on this machine, rendezvous without a TCPStore on all interfaces
        torch_config=(TorchConfig if c.address else LoopbackTorchConfig)(backend="nccl" if use_gpu else "gloo"),
        # [min, max] workers: Ray's elastic scaling (the group restarts from the latest checkpoint with the workers
        # it can get, and is resized every resize_interval_s when more become available)
        scaling_config=ScalingConfig(num_workers=c.workers, use_gpu=use_gpu, resources_per_worker=resources,
                                     elastic_resize_monitor_interval_s=c.resize_interval_s),
        run_config=RayRunConfig(
            name=cfg.name, storage_path=storage,
            failure_config=FailureConfig(max_failures=c.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=c.num_to_keep),
        ),
    )
