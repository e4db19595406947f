"""An embedded Ray run listens on the loopback interface only.

Ray 2.60 replaces ``_node_ip_address="127.0.0.1"`` by the machine's routable address, so gcs_server, raylet, the
dashboard and runtime-env agents, workers and driver would listen on every interface. Its local-only mode (the
default on macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) makes every process take 127.0.0.1 as the
node's address and bind there: :func:`loopback_only`. Ray Train's torch backend adds one more listener: rank 0's
``torch.distributed`` TCPStore, which binds all interfaces whatever its address; :class:`LoopbackTorchConfig`
rendezvous through a FileStore instead (every worker of an embedded run is on this machine) and pins gloo's
connections to the loopback interface. Every Ray gRPC and HTTP server also requires Ray's authentication token (on by
default in Ray 2.60: ``~/.ray/auth_token``), except three read-only Prometheus metrics endpoints (dashboard agent,
headless dashboard, autoscaler monitor) that Ray starts with every instance; tests/test_network.py checks all of it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend


@contextmanager
def loopback_only() -> Iterator[None]:
    """Ray's local-only mode while an embedded instance starts. The processes ray.init starts read it from their
    environment; this process read it when it imported ray, so its copy is switched too. Both are restored
    afterwards (a later ``--address`` connection from this process must announce a routable address)."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def loopback_interface() -> str:
    """The name of the loopback interface ('lo' on Linux, 'lo0' on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n in ("lo", "lo0")), next((n for n in names if n.startswith("lo")), "lo"))


def _pin_gloo_to(interface: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = interface


class _FileStoreTorchBackend(_TorchBackend):
    """Ray Train's torch backend with a FileStore rendezvous: no TCPStore listening on every interface."""

    store: str | None = None

    def on_start(self, worker_group, backend_config: LoopbackTorchConfig) -> None:
        self._remove_store()  # a restarted worker group's predecessor may not have shut down cleanly
        self.store = store = os.path.join(tempfile.gettempdir(), f"bigbatch-pg-{uuid.uuid4().hex}")  # per (re)start
        worker_group.execute(_pin_gloo_to, interface=loopback_interface())
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(
            rank, _setup_torch_process_group, backend=backend_config.backend or "gloo", world_rank=rank,
            world_size=len(worker_group), init_method=f"file://{store}", timeout_s=backend_config.timeout_s)
            for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: LoopbackTorchConfig) -> None:
        super().on_shutdown(worker_group, backend_config)
        self._remove_store()

    def _remove_store(self) -> None:
        if self.store:
            with contextlib.suppress(OSError):
                os.remove(self.store)
            self.store = None


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """TorchConfig for workers that all run on this machine: FileStore rendezvous, gloo on loopback."""

    @property
    def backend_cls(self):
        return _FileStoreTorchBackend
