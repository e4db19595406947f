"""Helpers shared by the VAE/GAN tests: digits as uint8 tensors, small configs, fixed noise, pixel Fréchet
distance, and a 2-process gloo runner (the DDP wrapper is the trainer's own)."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.config import RunConfig
from pretrain.methods import build_method


@functools.lru_cache(maxsize=2)
def digits_uint8(size: int = 16) -> torch.Tensor:
    """scikit-learn's 1797 handwritten digits, 8×8 grey levels 0–16 → uint8 ``[1797, 3, size, size]``."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    return (x * 255).round().to(torch.uint8)


def small_cfg(method: str, **sections: Any) -> RunConfig:
    """A fast CPU config on 16-px digits: tiny encoder, narrow decoder/generator; ``sections`` update the dump."""
    narrow = {"vae": {"vae": {"decoder_width": 32}}, "gan": {"gan": {"gen_width": 32}}}.get(method, {})
    tree: dict[str, Any] = {"method": method, "batch_size": 32, "data": {"train": "digits", "image_size": 16},
                            "model": {"encoder": "bb_convnet_tiny"}, "cluster": {"workers": 1}, **narrow}
    for key, value in sections.items():
        if isinstance(value, dict):
            tree.setdefault(key, {}).update(value)
        else:
            tree[key] = value
    return RunConfig.model_validate(tree)


def build(cfg: RunConfig, total_steps: int = 100, seed: int = 0, wrap: Callable | None = None,
          sgd_lr: float | None = None):
    """A configured method in train mode. ``sgd_lr``: swap every optimiser for plain SGD (no schedulers), so
    parameters depend linearly on gradients — Adam's per-element normalisation would amplify float noise in
    near-zero gradients and hide gradient-scale errors."""
    torch.manual_seed(seed)
    method = build_method(cfg)
    method.configure(total_steps, torch.device("cpu"), wrap or (lambda m: m))
    if sgd_lr is not None:
        method.optimizers = {k: torch.optim.SGD([p for g in o.param_groups for p in g["params"]], lr=sgd_lr)
                             for k, o in method.optimizers.items()}
        method.schedulers = {k: _NoSchedule() for k in method.schedulers}
    method.train()
    return method


class _NoSchedule:
    def step(self) -> None:
        pass


class FixedNoise:
    """Stands in for ``method.sample_noise``: the i-th call returns rows ``rows`` of ``tensors[i]``."""

    def __init__(self, tensors: list[torch.Tensor], rows: slice = slice(None)) -> None:
        self.tensors, self.rows, self.calls = tensors, rows, 0

    def __call__(self, n: int, *_: int) -> torch.Tensor:
        t = self.tensors[self.calls][self.rows]
        self.calls += 1
        assert t.shape[0] == n, (t.shape, n)
        return t.clone()


def pixel_frechet(a01: torch.Tensor, b01: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to 8×8 grey-level pixels of two image sets (float64)."""
    from scipy import linalg

    def feats(x: torch.Tensor) -> np.ndarray:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return F.adaptive_avg_pool2d(x.mean(1, keepdim=True), 8).flatten(1).double().numpy()

    fa, fb = feats(a01), feats(b01)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    return float(((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def params_and_grads(method: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{"params": state_dict, "grads": the .grad left by the last backward of each parameter that has one}."""
    return {"params": method.state_dict(),
            "grads": {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}}


def assert_ddp_matches(r0: dict, r1: dict, ref: dict) -> None:
    """Rank 0 and 1 bitwise equal; both equal the one-process reference (last gradients and parameters) to float
    summation-order noise. Run with ``build(..., sgd_lr=...)`` so a gradient off by a factor shows in both."""
    assert set(r0["grads"]) == set(ref["grads"]) and ref["grads"], "different parameters received gradients"
    for k, g in ref["grads"].items():
        assert torch.equal(r0["grads"][k], r1["grads"][k]), f"replica gradients differ in {k}"
        torch.testing.assert_close(r0["grads"][k], g, atol=1e-6 + 1e-3 * float(g.abs().max()), rtol=1e-3,
                                   msg=lambda m, k=k: f"DDP gradient ≠ one process in {k}: {m}")
    for k, v in ref["params"].items():
        assert torch.equal(r0["params"][k], r1["params"][k]), f"replicas differ in {k}"
        # Parameters carry the summation-order noise of every step so far (seen: 2e-6 after 3 steps under load);
        # a wrong gradient scale is caught above, relative to the gradient's size.
        torch.testing.assert_close(r0["params"][k], v, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, k=k: f"DDP ≠ one process in {k}: {m}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_gloo(fn: Callable, world: int, *args: Any) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned processes joined by a gloo process group."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, _free_port(), fn, args), nprocs=world, join=True)
