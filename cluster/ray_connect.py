"""Joining Ray: an existing cluster (with the project's packages shipped as ``py_modules``), the one this process
already runs in (``auto``), or a new embedded instance bound to loopback."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pretrain.config import RunConfig


def code_runtime_env() -> dict[str, Any]:
    """A Ray runtime_env shipping bigbatch's four packages from wherever they are installed (checkout or wheel), as
    directory paths: the Jobs API deep-copies the runtime_env, which module objects do not survive."""
    import cluster
    import data_pipeline
    import eval as eval_pkg
    import pretrain
    return {"py_modules": [str(Path(m.__file__).parent) for m in (data_pipeline, pretrain, eval_pkg, cluster)],
            "excludes": ["**/__pycache__"]}


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address == "auto":
        # The cluster this process already belongs to: RAY_ADDRESS (set for a Ray Jobs API / KubeRay job, whose
        # working_dir or image carries the code) or the cluster `ray start` made on this node.
        ray.init(address="auto")
    elif address:
        ray.init(address=address, runtime_env=code_runtime_env())
    else:
        # address="local" always starts a new instance: without it ray.init() attaches to whatever Ray was started
        # last on this machine (RAY_ADDRESS, /tmp/ray/ray_current_cluster), and dies with it. No dashboard: its head
        # process then runs without a listener. Every listener on 127.0.0.1: cluster/loopback.py.
        from cluster.loopback import loopback_only
        with loopback_only():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)


def embedded_cpus(cfg: RunConfig) -> int | None:
    """CPUs of an embedded Ray: the machine's, or enough for the workers and a periodic probe beside them."""
    if cfg.cluster.address or not (cfg.eval.probe and cfg.eval.every_k_checkpoints):
        return None
    need = math.ceil(cfg.cluster.max_workers * cfg.cluster.cpus_per_worker + cfg.eval.num_cpus)
    return need if need > (os.cpu_count() or 1) else None
