"""Progressive view size (data.view_size_start): the side at each position of the schedule, the shrinking of the
views against torchvision's antialiased resize, a run whose logged sides grow to the full view, the config errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cluster.run_config import ConfigError, load_run_config
from pretrain.trainer import run_single_process
from pretrain.view_ramp import ViewRamp, resize_views

TINY = ["model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32"]


def test_the_side_grows_in_steps_of_four_to_the_full_view_by_the_ramps_end():
    ramp = ViewRamp(16, 24, 0.5)
    assert [ramp.side(p) for p in (0.0, 0.24, 0.25, 0.49, 0.5, 0.9, 1.0, 1.3)] == [16, 16, 20, 20, 24, 24, 24, 24]
    sides = [ViewRamp(12, 30, 0.8).side(i / 1000) for i in range(1001)]
    assert sides[0] == 12 and sides[-1] == 30 and sorted(sides) == sides
    assert set(sides) == {12, 16, 20, 24, 28, 30}  # multiples of 4 above the start, then the full side
    assert ViewRamp(24, 24, 0.5).side(0.0) == 24


def test_resize_views_matches_torchvision_and_keeps_dtype_and_layout():
    g = torch.Generator().manual_seed(0)
    views = torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8, generator=g).contiguous(
        memory_format=torch.channels_last)
    out = resize_views(views, 16)
    ref = TF.resize(views.contiguous(), [16, 16], antialias=True)  # torchvision's uint8 bilinear
    assert out.dtype == torch.uint8 and out.shape == (6, 3, 16, 16)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out.int() - ref.int()).abs().max() <= 1  # rounding of the float path only
    assert resize_views(views, 24) is views
    flat = torch.full((2, 3, 24, 24), 77, dtype=torch.uint8)
    assert (resize_views(flat, 12) == 77).all()


def test_a_run_trains_on_growing_views_and_ends_at_the_full_side(tmp_path, digits_shards):
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "data.image_size=24",
                                 "data.view_size_start=12", "data.view_ramp=0.6", "batch_size=32", "steps=20",
                                 "log_every=1", "checkpoint_every=100", "cluster.workers=1"])
    _, hooks = run_single_process(cfg, tmp_path)
    sides = [m["view_size"] for m in hooks.logs]
    assert len(sides) == 20 and sides[0] == 12 and sides[-1] == 24 and sorted(sides) == sides
    assert sides.count(24) == 8  # from step 12 (60 % of 20) on
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in hooks.logs)
    plain = run_single_process(load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "steps=2",
                                                      "batch_size=32", "cluster.workers=1"]), tmp_path / "plain")[1]
    assert "view_size" not in plain.logs[-1]


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["data.view_size=24", "data.view_size_start=28"], "data.view_size_start=28: larger than the views' side 24"),
    (["data.image_size=16", "data.view_size_start=20"], "data.view_size_start=20: larger than the views' side 16"),
    (["method=vae", "data.view_size_start=12"], "progressive view sizes are for method=simclr"),
    (["data.view_ramp=0"], "data.view_ramp"),
])
def test_view_ramp_config_errors_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as exc:
        load_run_config(None, overrides)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
