"""A torch.distributed group of processes on this machine, meeting on the loopback interface: the doctor's DDP check
and the loss benchmark run their ranks in it."""

from __future__ import annotations

import os
import socket

import torch.distributed as dist


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_local_group(backend: str, rank: int, world_size: int, port: int) -> None:
    """This process as ``rank`` of ``world_size``, rendezvous at 127.0.0.1:``port``; the caller destroys the group
    (``dist.destroy_process_group()``). NCCL binds the current CUDA device: set it before."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world_size)
