"""Encoders by name through timm's registry, plus bigbatch's own small CNNs registered into it.

``create_encoder(name)`` returns a backbone whose forward gives pooled features ``[B, num_features]``.
``small_stem=True`` adapts ResNets to 32-px inputs (3×3 stride-1 first conv, no max-pool), as in
the SimCLR CIFAR recipe. ``norm="group"`` swaps BatchNorm for GroupNorm (batch-independent,
so data-parallel and single-process runs give the same numbers on CPU).
"""

from __future__ import annotations

import difflib

import timm
import torch
from timm.models import register_model
from torch import nn

from data_pipeline.errors import UserInputError

_DEFAULT_CFG = {"num_classes": 0, "input_size": (3, 32, 32)}


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, max(1, channels // 4)), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be batch|group|none, got {kind!r}")


class ConvNet(nn.Module):
    """A plain VGG-style CNN: stages of (conv3×3 → norm → ReLU) ×2 → 2×2 pool; global average pool.

    Small, fast on CPU, batch-independent with ``norm='group'``; the default for digits.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), in_chans: int = 3, norm: str = "batch",
                 num_classes: int = 0, **_: object) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i, w in enumerate(widths):
            for _j in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=norm == "none"), _norm_layer(norm, w), nn.ReLU(inplace=True)]
                c = w
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c
        self.head = nn.Linear(c, num_classes) if num_classes else nn.Identity()
        self.default_cfg = dict(_DEFAULT_CFG)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def bb_convnet_tiny(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~0.1 M parameters: widths 16-32-64."""
    return ConvNet(widths=(16, 32, 64), **kwargs)


@register_model
def bb_convnet_small(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~0.3 M parameters: widths 32-64-128."""
    return ConvNet(widths=(32, 64, 128), **kwargs)


@register_model
def bb_convnet_medium(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~1.1 M parameters: widths 64-128-256; 256-d features (≈ 90 pairs/s at 32 px on 2 cores, vs ≈ 280 for small)."""
    return ConvNet(widths=(64, 128, 256), **kwargs)


@register_model
def bb_convnet_deep(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~1.2 M parameters: four stages 32-64-128-256 (32 → 4 px), 256-d features. The extra stage runs at 4×4,
    so a training step runs at ≈ 0.78× small's images/s (0.66× end to end under Ray) for 4× the parameters; medium's
    wider early stages run at ≈ 0.28× (bf16 + NHWC, one core, batch 256)."""
    return ConvNet(widths=(32, 64, 128, 256), **kwargs)


def _small_stem(model: nn.Module) -> nn.Module:
    """3×3 stride-1 first convolution and no max-pool, for 32-px inputs (timm ResNet layout)."""
    if not (hasattr(model, "conv1") and isinstance(model.conv1, nn.Conv2d)):
        raise ValueError(f"small_stem applies to timm ResNet-style models with conv1; {type(model).__name__} has none")
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def is_encoder(name: str) -> bool:
    """Whether ``name`` is a model in timm's registry (bigbatch's bb_* included)."""
    return timm.is_model(name)


def close_encoder_names(name: str, n: int = 5) -> list[str]:
    """Registered model names closest to ``name`` (difflib ratio), for an unknown-encoder message."""
    return difflib.get_close_matches(name, timm.list_models(), n=n, cutoff=0.6)


def create_encoder(name: str = "resnet18", *, small_stem: bool = False, norm: str = "batch",
                   in_chans: int = 3) -> nn.Module:
    """A timm backbone with its classifier removed: forward(x) -> [B, model.num_features]."""
    kwargs: dict[str, object] = {"pretrained": False, "num_classes": 0, "in_chans": in_chans}
    if name.startswith("bb_"):
        kwargs["norm"] = norm
    elif norm == "group":
        kwargs["norm_layer"] = lambda c, **_: _norm_layer("group", c)
    elif norm != "batch":
        raise ValueError(f"norm={norm!r} is only available for bb_* encoders; timm models take batch|group")
    if not is_encoder(name):
        near = close_encoder_names(name)
        raise UserInputError(f"unknown encoder {name!r}" + (f"; close matches: {', '.join(near)}" if near else ""))
    model = timm.create_model(name, **kwargs)
    if small_stem and not name.startswith("bb_"):
        model = _small_stem(model)
    return model


class ProjectionHead(nn.Module):
    """SimCLR's MLP head: Linear → BN → ReLU (× layers−1) → Linear to out_dim."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, layers: int = 2,
                 norm: str = "batch") -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden_dim, bias=norm == "none")]
            if norm == "batch":
                mods.append(nn.BatchNorm1d(hidden_dim))
            elif norm == "group":
                mods.append(nn.LayerNorm(hidden_dim))
            mods.append(nn.ReLU(inplace=True))
            d = hidden_dim
        mods.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
