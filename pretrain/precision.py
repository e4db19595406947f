"""Numerics for every method: autocast per ``cfg.precision`` and the process-wide backend settings of a run. (fp16
loss scaling: one ``torch.amp.GradScaler`` per method, shared by a step's optimisers and updated once per train step,
as torch.amp recommends — pretrain/methods/base.py.)"""

from __future__ import annotations

import os
import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

# cuBLAS is reproducible under deterministic algorithms only with a fixed workspace; read at the first cuBLAS call.
CUBLAS_WORKSPACE = ":4096:8"


def configure_backends(device: torch.device, *, precision: str, tf32: bool, deterministic: bool) -> None:
    """Process-wide settings for training on ``device``.

    deterministic: every op must use a deterministic kernel (an op without one raises, naming itself), cuBLAS gets a
    fixed workspace, cuDNN neither autotunes nor picks non-deterministic algorithms. Otherwise on CUDA cuDNN
    autotunes each convolution once (the shapes are fixed for a run). tf32: fp32 matmuls and convolutions on CUDA run
    on TF32 tensor cores (10-bit mantissa products, fp32 accumulation); false: full fp32 ("ieee").
    Warns when bf16 is asked of a GPU without native bf16 (compute capability < 8: V100, T4).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        warnings.warn(f"precision=bf16 on {name}, which has no native bf16 (compute capability < 8.0): autocast "
                      "emulates it slowly; use precision=fp16 on this GPU (bigbatch scales the fp16 loss)", stacklevel=2)


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager:
    """bf16/fp16 autocast on the device's type; fp32 → no autocast. Loss maths casts to fp32 itself."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


