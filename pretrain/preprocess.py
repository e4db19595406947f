"""Model-side input preparation: uint8 [0, 255] or float [0, 1] images → channel-standardised float."""

from __future__ import annotations

import torch
from torch import nn

from data_pipeline.pixels import to_unit_range

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics: a fixed, data-independent standardisation
STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """x ↦ (x/255 − mean)/std for uint8 input; (x − mean)/std for float input already in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def float_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.float_input(to_unit_range(x))
