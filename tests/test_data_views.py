"""The batched SimCLR ops against torchvision.transforms.v2.functional, per view, and the parameter sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from data_pipeline import views as V
from data_pipeline.pixels import to_unit_range


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 24, generator=g)
    x[0] = 0.5                      # a grey image: zero chroma
    x[1, :, :5] = 1.0               # saturated region
    return x


@pytest.mark.parametrize(("op", "ref", "lo", "hi"), [
    (V.brightness, TF.adjust_brightness, 0.2, 1.8),
    (V.contrast, TF.adjust_contrast, 0.2, 1.8),
    (V.saturation, TF.adjust_saturation, 0.2, 1.8),
    (V.hue, TF.adjust_hue, -0.5, 0.5),
])
def test_colour_ops_match_torchvision_per_image(images, op, ref, lo, hi):
    f = torch.linspace(lo, hi, len(images))
    out = op(images.clone(), f)
    for i in range(len(images)):
        torch.testing.assert_close(out[i], ref(images[i], float(f[i])), atol=2e-5, rtol=0)


def test_blur_matches_torchvision_per_image(images):
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
    out = V.blur(images.clone(), sigma, 7)
    for i in range(len(images)):
        torch.testing.assert_close(out[i], TF.gaussian_blur(images[i], [7, 7], [float(sigma[i])] * 2),
                                   atol=1e-5, rtol=0)


def test_crop_resize_flip_matches_resized_crop():
    imgs = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    seeds = np.arange(4, dtype=np.uint64) * 1000003
    p = V.draw_params(seeds, np.array([[32, 32]] * 4), V.ViewRecipe(size=32), 2)
    src = np.tile(np.arange(4), 2)
    fast = V.crop_same_size(imgs.float(), src, p, 32)
    each = V.crop_each(list(imgs), src, p, 32)
    for t in range(8):
        ref = TF.resized_crop(imgs[src[t]].float(), int(p.top[t]), int(p.left[t]), int(p.height[t]),
                              int(p.width[t]), [32, 32], antialias=True) / 255
        ref = ref.flip(-1) if p.flip[t] else ref
        torch.testing.assert_close(fast[t], ref, atol=1e-5, rtol=0)   # upsampling: exact
        ref8 = TF.resized_crop(imgs[src[t]], int(p.top[t]), int(p.left[t]), int(p.height[t]), int(p.width[t]),
                               [32, 32], antialias=True)                 # the per-view path: uint8 in and out
        ref8 = ref8.flip(-1) if p.flip[t] else ref8
        torch.testing.assert_close(each[t], ref8.float() / 255, atol=1e-6, rtol=0)


def test_parameters_follow_the_recipe():
    n = 4000
    seeds = np.arange(n, dtype=np.uint64) * 7919 + 11
    r = V.ViewRecipe(size=32)
    p = V.draw_params(seeds, np.array([[32, 32]] * n), r, 1)
    area = p.height * p.width / 1024
    aspect = p.width / p.height
    found = (area >= 0.07) & (area <= 1.0)
    assert found.mean() > 0.99
    assert np.quantile(aspect, 0.01) > 0.6 and np.quantile(aspect, 0.99) < 1.6
    assert (p.top >= 0).all() and (p.top + p.height <= 32).all() and (p.left + p.width <= 32).all()
    for arr, rate in ((p.flip, 0.5), (p.jitter, 0.8), (p.gray, 0.2)):
        assert abs(arr.mean() - rate) < 0.03
    assert not p.blur.any()                                            # off by default at 32 px
    assert V.ViewRecipe(size=224).blur_kernel == 23 and V.ViewRecipe(size=224).blur_on
    q = V.draw_params(seeds, np.array([[224, 224]] * n), V.ViewRecipe(size=224), 1)
    assert abs(q.blur.mean() - 0.5) < 0.03 and q.sigma.min() >= 0.1 and q.sigma.max() <= 2.0
    assert (p.factors[:, :3] >= 0.2).all() and (p.factors[:, :3] <= 1.8).all()
    assert (np.abs(p.factors[:, 3]) <= 0.2).all()
    assert {tuple(o) for o in p.order[:200]} > {(0, 1, 2, 3)}              # random op order


def test_views_are_a_function_of_the_seed():
    imgs = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(5)]
    seeds = np.array([V.sample_seed(0, 1, f"k{i}") for i in range(5)], dtype=np.uint64)
    a = V.make_views(imgs, seeds, V.ViewRecipe(size=24), 2).unflatten(0, (2, -1))
    b = V.make_views(imgs[2:4], seeds[2:4], V.ViewRecipe(size=24), 2).unflatten(0, (2, -1))  # other batch, same samples
    assert a[0].shape == (5, 3, 24, 24) and a[0].dtype == torch.uint8
    assert torch.equal(a[0][2:4], b[0]) and torch.equal(a[1][2:4], b[1])
    assert not torch.equal(a[0], a[1])
    assert V.sample_seed(0, 1, "k0") != V.sample_seed(0, 2, "k0") != V.sample_seed(1, 1, "k0")
    assert to_unit_range(a[0]).max() <= 1.0 and to_unit_range(a[0]).dtype == torch.float32


def test_mixed_sizes_and_centre_view():
    imgs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((40, 60), (64, 48), (33, 33))]
    seeds = np.arange(3, dtype=np.uint64)
    v = V.make_views(imgs, seeds, V.ViewRecipe(size=32, blur=True), 2)
    assert v.shape == (2 * 3, 3, 32, 32)
    c = V.center_view(imgs, 32)
    torch.testing.assert_close(c[2], TF.center_crop(TF.resize(imgs[2], [32], antialias=True), [32, 32]))


@pytest.mark.parametrize("side", [16, 64])   # the batched (small) and the view-by-view (large) paths
def test_colour_pipeline_equals_torchvision_ops_in_the_drawn_order(side):
    n = 24
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, side, side, generator=g)
    r = V.ViewRecipe(size=side, blur=True)
    p = V.draw_params(np.arange(n, dtype=np.uint64) * 31 + 7, np.array([[side, side]] * n), r, 1)
    out = V.colour(x.clone(), p, r)
    refs = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for t in range(n):
        y = x[t]
        if p.jitter[t]:
            for op in p.order[t]:
                y = refs[op](y, float(p.factors[t, op]))
        if p.gray[t]:
            y = TF.rgb_to_grayscale(y, num_output_channels=3)
        if p.blur[t]:
            y = TF.gaussian_blur(y, [r.blur_kernel] * 2, [float(p.sigma[t])] * 2)
        torch.testing.assert_close(out[t], y, atol=1e-4, rtol=0)
    assert p.jitter.any() and p.gray.any() and p.blur.any()


def test_per_image_draws_stack_to_the_batch_draw_and_later_views_continue_the_stream():
    """What the reduced-decode path relies on: each image's own draw, stacked, is the batch's draw; and views
    drawn from ``first_view`` on (multi-crop's local views) are those views of one longer draw."""
    seeds = np.array([V.sample_seed(3, 0, f"k{i}") for i in range(5)], dtype=np.uint64)
    sizes = np.array([[40, 60], [64, 48], [33, 33], [300, 200], [32, 32]])
    r = V.ViewRecipe(size=24)
    batch = V.draw_params(seeds, sizes, r, 2)
    rows = [V.draw_params(seeds[i:i + 1], sizes[i:i + 1], r, 2) for i in range(5)]
    stacked = V.stack_params(rows, 2)
    longer = V.draw_params(seeds, sizes, r, 5)
    later = V.draw_params(seeds, sizes, r, 3, first_view=2)
    for k in V.ViewParams.__dataclass_fields__:
        assert np.array_equal(getattr(stacked, k), getattr(batch, k)), k
        assert np.array_equal(getattr(longer, k)[2 * 5:], getattr(later, k)), k
    assert not np.array_equal(later.top[:5], batch.top[:5]) or not np.array_equal(later.left[:5], batch.left[:5])
