"""bigbatch's registered CNNs: the widths, feature sizes and parameter counts their docstrings state, at the view
sizes the presets train on (24 px) and probe on (32 px)."""

from __future__ import annotations

import pytest
import timm
import torch

from pretrain.encoders import create_encoder

# name → (stage widths, parameters in millions as the docstring states)
STATED = {"bb_convnet_tiny": ((16, 32, 64), 0.07), "bb_convnet_small": ((32, 64, 128), 0.3),
          "bb_convnet_medium": ((64, 128, 256), 1.1), "bb_convnet_deep": ((32, 64, 128, 256), 1.2),
          "bb_convnet_lean": ((16, 64, 128, 256), 1.2), "bb_convnet_wide": ((16, 64, 128, 384), 2.0)}


@pytest.mark.parametrize("name", sorted(STATED))
def test_convnet_widths_features_and_size_are_as_stated(name):
    widths, millions = STATED[name]
    model = create_encoder(name, small_stem=True).eval()
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [w for w in widths for _ in range(2)]
    assert model.num_features == widths[-1]
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.15)
    with torch.no_grad():
        for size in (24, 32):
            assert model(torch.randn(2, 3, size, size)).shape == (2, widths[-1])
    assert timm.is_model(name) and name in timm.list_models("bb_convnet_*")
