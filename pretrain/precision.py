"""Mixed precision for every method: autocast per ``cfg.precision`` and, for fp16, one GradScaler
shared by all of a step's optimisers (updated once per train step, as torch.amp recommends)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager:
    """bf16/fp16 autocast on the device's type; fp32 → no autocast. Loss maths casts to fp32 itself."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class LossScaler:
    """``backward(loss)`` / ``step(opt)`` / ``update()``: plain calls, or torch.amp.GradScaler's for fp16."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [0, 1]; float input is assumed to be in [0, 1] already."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()
