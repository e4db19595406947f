"""Encoders by name through timm's registry, plus bigbatch's own small CNNs registered into it.

``create_encoder(name)`` returns a backbone whose forward gives pooled features ``[B, num_features]``.
``small_stem=True`` adapts ResNets to 32-px inputs (3×3 stride-1 first conv, no max-pool), as in
the SimCLR CIFAR recipe. ``norm="group"`` swaps BatchNorm for GroupNorm (batch-independent,
so data-parallel and single-process runs give the same numbers on CPU).

Every encoder is built by a timm entrypoint, so timm records how to rebuild it (``model_args``) and
``timm.create_model(..., pretrained=True)`` loads exported weights into it: ``bb_convnet_*`` are bigbatch's
CNNs, ``bb_timm(base_model=…, small_stem=…, norm=…)`` is a timm model with bigbatch's changes; both need
``import pretrain.encoders`` (bigbatch installed) to be in timm's registry. Unchanged timm models stay stock.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, model_entrypoint, register_model
from torch import nn

from data_pipeline.errors import UserInputError
from pretrain.preprocess import MEAN, STD


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """timm pretrained_cfg of bigbatch's entrypoints: 32-px inputs, bigbatch's Normalize statistics, no classifier."""
    return {"input_size": (3, 32, 32), "num_classes": 0, "mean": MEAN, "std": STD, "interpolation": "bilinear",
            "crop_pct": 1.0, "crop_mode": "center", **kwargs}


default_cfgs = generate_default_cfgs({  # read by timm's register_model below
    **{f"bb_convnet_{size}": _cfg(first_conv="features.0", classifier="head")
       for size in ("tiny", "small", "medium", "deep", "lean", "wide")},
    "bb_timm": _cfg(),
})


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
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.head = nn.Linear(c, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def _convnet(variant: str, pretrained: bool, **kwargs: Any) -> ConvNet:
    return build_model_with_cfg(ConvNet, variant, pretrained, **kwargs)


@register_model
def bb_convnet_tiny(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~0.07 M parameters: widths 16-32-64."""
    return _convnet("bb_convnet_tiny", pretrained, widths=(16, 32, 64), **kwargs)


@register_model
def bb_convnet_small(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~0.3 M parameters: widths 32-64-128."""
    return _convnet("bb_convnet_small", pretrained, widths=(32, 64, 128), **kwargs)


@register_model
def bb_convnet_medium(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~1.1 M parameters: widths 64-128-256; 256-d features."""
    return _convnet("bb_convnet_medium", pretrained, widths=(64, 128, 256), **kwargs)


@register_model
def bb_convnet_deep(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~1.2 M parameters: four stages 32-64-128-256 (32 → 4 px), 256-d features; the extra stage runs at 4×4 px, so
    it adds parameters at little compute (measured: docs/results.md)."""
    return _convnet("bb_convnet_deep", pretrained, widths=(32, 64, 128, 256), **kwargs)


@register_model
def bb_convnet_lean(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~1.2 M parameters: bb_convnet_deep with a 16-wide first stage (16-64-128-256), the stage that costs most."""
    return _convnet("bb_convnet_lean", pretrained, widths=(16, 64, 128, 256), **kwargs)


@register_model
def bb_convnet_wide(pretrained: bool = False, **kwargs: object) -> ConvNet:
    """~2.0 M parameters: 16-64-128-384, 384-d features at about bb_convnet_deep's cost per image."""
    return _convnet("bb_convnet_wide", pretrained, widths=(16, 64, 128, 384), **kwargs)


def _small_stem(model: nn.Module) -> nn.Module:
    """3×3 stride-1 first convolution and no max-pool, for 32-px inputs (timm ResNet layout)."""
    if not (hasattr(model, "conv1") and isinstance(model.conv1, nn.Conv2d)):
        raise ValueError(f"small_stem applies to timm ResNet-style models with conv1; {type(model).__name__} has none")
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _adapted(base_model: str, small_stem: bool = False, norm: str = "batch", **kwargs: Any) -> nn.Module:
    """timm's ``base_model`` (random init) with bigbatch's changes: GroupNorm for ``norm='group'``, the small stem."""
    if norm == "group":
        kwargs["norm_layer"] = lambda c, **_: _norm_layer("group", c)
    elif norm != "batch":
        raise ValueError(f"norm={norm!r} is only available for bb_* encoders; timm models take batch|group")
    _check_known(base_model)
    model = model_entrypoint(base_model)(pretrained=False, **kwargs)
    return _small_stem(model) if small_stem else model


@register_model
def bb_timm(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model as bigbatch trains it: ``base_model`` name, ``small_stem``, ``norm`` (batch|group)."""
    return build_model_with_cfg(_adapted, "bb_timm", pretrained, **kwargs)


def is_encoder(name: str) -> bool:
    """Whether ``name`` is a model in timm's registry (bigbatch's bb_* included)."""
    return timm.is_model(name)


def close_encoder_names(name: str, n: int = 5) -> list[str]:
    """Registered model names closest to ``name`` (difflib ratio), for an unknown-encoder message."""
    return difflib.get_close_matches(name, timm.list_models(), n=n, cutoff=0.6)


def _check_known(name: str) -> None:
    if not is_encoder(name):
        near = close_encoder_names(name)
        raise UserInputError(f"unknown encoder {name!r}" + (f"; close matches: {', '.join(near)}" if near else ""))


def encoder_args(name: str = "resnet18", *, small_stem: bool = False, norm: str = "batch",
                 in_chans: int = 3) -> tuple[str, dict[str, Any]]:
    """(timm entrypoint, its model_args) that build the encoder ``create_encoder`` describes, classifier removed."""
    if name.startswith("bb_"):
        return name, {"in_chans": in_chans, "num_classes": 0, "norm": norm}
    if small_stem or norm != "batch":
        return "bb_timm", {"base_model": name, "small_stem": small_stem, "norm": norm, "in_chans": in_chans,
                           "num_classes": 0}
    return name, {"in_chans": in_chans, "num_classes": 0}


def create_encoder(name: str = "resnet18", *, small_stem: bool = False, norm: str = "batch",
                   in_chans: int = 3) -> nn.Module:
    """A timm backbone with its classifier removed: forward(x) -> [B, model.num_features]."""
    _check_known(name)
    arch, args = encoder_args(name, small_stem=small_stem, norm=norm, in_chans=in_chans)
    return timm.create_model(arch, pretrained=False, **args)


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
