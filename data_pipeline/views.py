"""SimCLR views, batched: one decode per image, every random draw keyed by (seed, epoch, sample key).

Recipe (Chen et al. 2020): random resized crop (area 0.08–1, aspect 3/4–4/3) → horizontal flip (p=0.5) →
colour jitter (brightness, contrast, saturation 0.8s, hue 0.2s, random order, p=0.8) → grayscale (p=0.2) →
Gaussian blur (kernel ≈ 10% of the side, σ ∈ [0.1, 2], p=0.5; off by default at ≤ 32 px).
Each op follows the definition of the matching ``torchvision.transforms.v2.functional`` op (tests compare
them), but runs on a whole batch with per-view parameters: crop+resize+flip is one ``grid_sample`` (same-size
images) or ``v2.functional.resized_crop`` per view (mixed sizes), the colour ops are batched tensor maths.
The parameters come from a counter-based generator (splitmix64 of a per-sample seed), so a sample's views
are the same whatever the number of ranks, workers, or where the stream resumed. View v of a sample reads
counters [40·v, 40·(v+1)) of its stream, so multi-crop's local views (``first_view=V``) draw after the V global ones.
Output: one uint8 ``[V·n, 3, S, S]`` tensor, view-major (rows v·n … v·n+n−1 are view v of the n images);
models take ``pixels.to_unit_range``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data_pipeline.pixels import to_uint8, to_unit_range

GRAY = (0.2989, 0.587, 0.114)  # the ITU-R 601 weights torchvision uses
_U = 40                          # uniforms per view


@dataclass(frozen=True)
class ViewRecipe:
    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    strength: float = 1.0
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur: bool | None = None          # None: on above 32 px
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @property
    def blur_on(self) -> bool:
        return self.size > 32 if self.blur is None else self.blur

    @property
    def blur_kernel(self) -> int:
        """Odd kernel ≈ 10% of the side (23 at 224 px)."""
        return max(3, int(0.1 * self.size) // 2 * 2 + 1)


def sample_seed(seed: int, epoch: int, key: str, lap: int = 0) -> int:
    """A 64-bit seed per (seed, epoch, key, lap)."""
    h = hashlib.blake2b(f"{seed}\x1f{epoch}\x1f{key}\x1f{lap}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def uniforms(seeds: np.ndarray, count: int, start: int = 0) -> np.ndarray:
    """``[len(seeds), count]`` uniforms in [0, 1): counters ``start … start+count−1`` of each seed's splitmix64
    stream (counter-based)."""
    with np.errstate(over="ignore"):
        c = np.arange(start + 1, start + count + 1, dtype=np.uint64)
        s = seeds.astype(np.uint64)[:, None] + np.uint64(0x9E3779B97F4A7C15) * c
        s = (s ^ (s >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        s = (s ^ (s >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        s = s ^ (s >> np.uint64(31))
    return (s >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass
class ViewParams:
    """Per-view parameters (arrays of length m = views × images, view-major)."""

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    flip: np.ndarray
    jitter: np.ndarray
    factors: np.ndarray   # [m, 4]: brightness, contrast, saturation, hue
    order: np.ndarray     # [m, 4]: op order
    gray: np.ndarray
    blur: np.ndarray
    sigma: np.ndarray


def draw_params(seeds: np.ndarray, sizes: np.ndarray, recipe: ViewRecipe, num_views: int,
                first_view: int = 0) -> ViewParams:
    """Parameters of views ``first_view … first_view+num_views−1`` of n images with ``sizes[i] = (H, W)``
    (torchvision's crop sampling: 10 tries of (area, log-aspect), else a centre crop clamped to the aspect range)."""
    n = len(seeds)
    u = uniforms(seeds, _U * num_views, _U * first_view)
    u = u.reshape(n, num_views, _U).transpose(1, 0, 2).reshape(n * num_views, _U)
    hh = np.tile(sizes[:, 0], num_views).astype(np.float64)
    ww = np.tile(sizes[:, 1], num_views).astype(np.float64)
    area = (hh * ww)[:, None]
    target = area * (recipe.scale[0] + (recipe.scale[1] - recipe.scale[0]) * u[:, 0:10])
    lr0, lr1 = math.log(recipe.ratio[0]), math.log(recipe.ratio[1])
    aspect = np.exp(lr0 + (lr1 - lr0) * u[:, 10:20])
    cw = np.round(np.sqrt(target * aspect))
    ch = np.round(np.sqrt(target / aspect))
    ok = (cw > 0) & (ch > 0) & (cw <= ww[:, None]) & (ch <= hh[:, None])
    first = ok.argmax(1)
    rows = np.arange(len(u))
    w = cw[rows, first]
    h = ch[rows, first]
    found = ok.any(1)
    # fallback: the whole image, clamped to the aspect range, centred
    in_ratio = ww / hh
    fw = np.where(in_ratio < recipe.ratio[0], ww, np.where(in_ratio > recipe.ratio[1], np.round(hh * recipe.ratio[1]), ww))
    fh = np.where(in_ratio < recipe.ratio[0], np.round(ww / recipe.ratio[0]), hh)
    w = np.where(found, w, fw)
    h = np.where(found, h, fh)
    top = np.where(found, np.floor(u[:, 20] * (hh - h + 1)), (hh - h) // 2)
    left = np.where(found, np.floor(u[:, 21] * (ww - w + 1)), (ww - w) // 2)
    s = recipe.strength
    lo = np.array([max(0.0, 1 - 0.8 * s)] * 3 + [-0.2 * s])
    hi = np.array([1 + 0.8 * s] * 3 + [0.2 * s])
    return ViewParams(
        top=top.astype(np.int64), left=left.astype(np.int64), height=h.astype(np.int64), width=w.astype(np.int64),
        flip=u[:, 22] < recipe.flip_p, jitter=u[:, 23] < recipe.jitter_p,
        factors=lo + (hi - lo) * u[:, 24:28], order=np.argsort(u[:, 28:32], axis=1),
        gray=u[:, 32] < recipe.gray_p, blur=(u[:, 33] < recipe.blur_p) & recipe.blur_on,
        sigma=recipe.blur_sigma[0] + (recipe.blur_sigma[1] - recipe.blur_sigma[0]) * u[:, 34])


# ---- colour ops on float [k, 3, H, W] in [0, 1] with per-image factors [k] ----------------------------------

def _gray(x: torch.Tensor) -> torch.Tensor:
    return (GRAY[0] * x[:, 0:1] + GRAY[1] * x[:, 1:2] + GRAY[2] * x[:, 2:3])


def _col(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """In place: ``clamp(f·x)``."""
    return x.mul_(_col(f)).clamp_(0, 1)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """In place: ``clamp(f·x + (1−f)·mean(gray(x)))``."""
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return x.mul_(_col(f)).add_((1 - _col(f)) * mean).clamp_(0, 1)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """In place: ``clamp(f·x + (1−f)·gray(x))``."""
    g = _gray(x).mul_(1 - _col(f))
    return x.mul_(_col(f)).add_(g).clamp_(0, 1)


def hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``f`` turns (f ∈ [-0.5, 0.5]); value and saturation are kept.
    With chroma c = max − min, the hue in sixths is (g−b)/c, 2 + (b−r)/c or 4 + (r−g)/c (r, g or b the max);
    channel n of the result (n = 5, 3, 1 for r, g, b) is ``max − c·clamp(2 − |k − 2|, 0, 1)``,
    ``k = (n + hue + 6f) mod 6``."""
    r, g, b = x.unbind(1)
    maxc = torch.amax(x, dim=1)
    chroma = maxc - torch.amin(x, dim=1)
    c2 = chroma * 2.0
    h6 = torch.where(r == maxc, g - b, torch.where(g == maxc, (b - r).add_(c2), (r - g).add_(c2).add_(c2)))
    h6.div_(torch.where(chroma > 0, chroma, 1.0)).add_((6.0 * f + 6.0).view(-1, 1, 1))
    k = h6.unsqueeze(1) + torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k.sub_(torch.floor(k / 6.0).mul_(6.0))
    k = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)
    return k.mul_(chroma.unsqueeze(1)).neg_().add_(maxc.unsqueeze(1))


_OPS = (brightness, contrast, saturation, hue)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """``[k, size]`` normalised 1-D Gaussians."""
    half = (size - 1) / 2
    t = torch.linspace(-half, half, size)
    g = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    return g / g.sum(1, keepdim=True)


def blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Separable Gaussian blur, reflect padding, one σ per image."""
    k, c, h, w = x.shape
    g = gaussian_kernels(sigma, size).repeat_interleave(c, 0)  # [k*c, size]
    y = F.pad(x.reshape(1, k * c, h, w), (size // 2,) * 4, mode="reflect")
    y = F.conv2d(y, g.view(k * c, 1, 1, size), groups=k * c)
    y = F.conv2d(y, g.view(k * c, 1, size, 1), groups=k * c)
    return y.view(k, c, h, w)


def colour(x: torch.Tensor, p: ViewParams, recipe: ViewRecipe) -> torch.Tensor:
    """Jitter (random op order per view) → grayscale → blur on float ``x``. Small images: at each of the four
    positions the batch is regrouped by the op its views draw there, so every op runs in place on one
    contiguous slice; large images: view by view. Returns the result (``x`` may be reused)."""
    factors = torch.from_numpy(p.factors).float()
    if x.shape[-1] * x.shape[-2] >= 4096:
        for t in np.flatnonzero(p.jitter).tolist():
            v = x[t: t + 1]
            for op in p.order[t].tolist():
                v = _OPS[op](v, factors[t: t + 1, op])
            if v.data_ptr() != x[t: t + 1].data_ptr():
                x[t: t + 1] = v
    elif p.jitter.any():
        perm = np.arange(len(x))                       # current row → view
        codes = np.where(p.jitter[:, None], p.order, 4)  # 4: no jitter
        for pos in range(4):
            s = np.argsort(codes[perm, pos], kind="stable")
            perm = perm[s]
            x = x.index_select(0, torch.from_numpy(s))
            bounds = np.searchsorted(codes[perm, pos], np.arange(6))
            for op in range(4):
                a, b = int(bounds[op]), int(bounds[op + 1])
                if b > a:
                    seg = x[a:b]
                    out = _OPS[op](seg, factors[torch.from_numpy(perm[a:b]), op])
                    if out.data_ptr() != seg.data_ptr():
                        seg.copy_(out)
        x = x.index_select(0, torch.from_numpy(np.argsort(perm)))
    sel = np.flatnonzero(p.gray)
    if len(sel):
        idx = torch.from_numpy(sel)
        x.index_copy_(0, idx, _gray(x.index_select(0, idx)).expand(-1, 3, -1, -1).contiguous())
    sel = np.flatnonzero(p.blur)
    if len(sel):
        idx = torch.from_numpy(sel)
        x.index_copy_(0, idx, blur(x.index_select(0, idx), torch.from_numpy(p.sigma[sel]).float(), recipe.blur_kernel))
    return x


# ---- crop + resize + flip --------------------------------------------------------------------------------------

def _coords(start: np.ndarray, length: np.ndarray, size: int, extent: int,
            flip: np.ndarray | None = None) -> torch.Tensor:
    """``[m, size]`` normalised (align_corners=False) source coordinates of the crop [start, start+length)
    resized to ``size`` samples, clamped to the crop's outer pixel centres (as resizing the cropped tensor
    does); reversed where ``flip``."""
    o = np.arange(size, dtype=np.float64)[None] + 0.5
    src = start[:, None] + np.clip(o * (length[:, None] / size) - 0.5, 0.0, None)
    src = np.minimum(src, (start + length - 1)[:, None].astype(np.float64))
    if flip is not None:
        src = np.where(flip[:, None], src[:, ::-1], src)
    return torch.from_numpy(((2 * src + 1) / extent - 1).astype(np.float32))


def crop_same_size(images: torch.Tensor, src: np.ndarray, p: ViewParams, size: int) -> torch.Tensor:
    """Batched bilinear resized crop + flip of same-size float images ``[n, 3, H, W]`` (0..255) → float
    ``[m, 3, S, S]`` in [0, 1]: one ``grid_sample`` on a separable grid. Equals ``v2.functional.resized_crop``
    (bilinear) when upsampling; it does not antialias when shrinking (make_views sends those views to
    :func:`crop_each`)."""
    n, c, hgt, wid = images.shape
    m = len(src)
    gy = _coords(p.top, p.height, size, hgt)
    gx = _coords(p.left, p.width, size, wid, p.flip)
    grid = torch.empty(m, size, size, 2)
    grid[..., 0] = gx[:, None, :]
    grid[..., 1] = gy[:, :, None]
    x = images.index_select(0, torch.from_numpy(src))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).div_(255.0)


def crop_each(images: list[torch.Tensor], src: np.ndarray, p: ViewParams, size: int,
              scale: list[tuple[float, float]] | None = None) -> torch.Tensor:
    """Per-view ``v2.functional.resized_crop`` (antialiased) + flip for images of mixed sizes; ``scale[i]``
    maps original-size crop boxes onto a reduced decode of image i."""
    from torchvision.transforms.v2 import functional as TF

    out = torch.empty(len(src), 3, size, size, dtype=torch.uint8)
    for t, i in enumerate(src.tolist()):
        sy, sx = scale[i] if scale else (1.0, 1.0)
        img = images[i]
        top, left = int(p.top[t] * sy), int(p.left[t] * sx)
        h = max(1, min(int(round(p.height[t] * sy)), img.shape[1] - top))
        w = max(1, min(int(round(p.width[t] * sx)), img.shape[2] - left))
        v = TF.resized_crop(img.unsqueeze(0), top, left, h, w, [size, size], antialias=True)[0]  # uint8 kernel
        out[t] = v.flip(-1) if p.flip[t] else v
    return to_unit_range(out)


def make_views(images: list[torch.Tensor], seeds: np.ndarray, recipe: ViewRecipe, num_views: int = 2,
               sizes: np.ndarray | None = None, scale: list[tuple[float, float]] | None = None,
               params: ViewParams | None = None, first_view: int = 0, chunk_pixels: int = 1 << 19) -> torch.Tensor:
    """Views ``first_view …`` (``num_views`` of them) of n decoded uint8 images ``[3, H, W]`` as one uint8
    ``[num_views·n, 3, S, S]`` tensor, view-major. ``sizes`` (H, W) of the original images when ``images`` were
    decoded reduced by ``scale`` (see decode.decode_reduced); ``params``: the views' parameters when the caller
    already drew them (``draw_params(seeds, sizes, recipe, num_views, first_view)``)."""
    n, s = len(images), recipe.size
    if sizes is None:
        sizes = np.array([im.shape[1:] for im in images], dtype=np.int64).reshape(n, 2)
    p = params if params is not None else draw_params(seeds, sizes, recipe, num_views, first_view)
    m = n * num_views
    src = np.tile(np.arange(n), num_views)
    same = scale is None and bool((sizes == sizes[0]).all())
    stacked = torch.stack(images).float() if same else None
    shrink = (p.height > s) | (p.width > s) if same else np.ones(m, dtype=bool)  # antialiased per-view path
    out = torch.empty(m, 3, s, s, dtype=torch.uint8)
    step = max(16, chunk_pixels // (3 * s * s))
    for a in range(0, m, step):
        b = min(m, a + step)
        pc = _slice(p, a, b)
        if not shrink[a:b].any():
            x = crop_same_size(stacked, src[a:b], pc, s)
        elif shrink[a:b].all():
            x = crop_each(images, src[a:b], pc, s, scale)
        else:
            x = torch.empty(b - a, 3, s, s)
            up = np.flatnonzero(~shrink[a:b])
            down = np.flatnonzero(shrink[a:b])
            x.index_copy_(0, torch.from_numpy(up), crop_same_size(stacked, src[a:b][up], _take(pc, up), s))
            x.index_copy_(0, torch.from_numpy(down), crop_each(images, src[a:b][down], _take(pc, down), s, scale))
        # Quantised to uint8 on purpose between the colour ops and the model's Normalize: batches cross process
        # boundaries (loader workers → trainer → device) at a quarter of float32's size.
        out[a:b] = to_uint8(colour(x, pc, recipe))
    return out


def stack_params(rows: list[ViewParams], num_views: int) -> ViewParams:
    """The view-major parameters of n images from each image's own ``draw_params`` (n = 1) result."""
    return ViewParams(**{k: np.stack([getattr(r, k) for r in rows], axis=1).reshape(num_views * len(rows),
                                                                                     *getattr(rows[0], k).shape[1:])
                         for k in ViewParams.__dataclass_fields__})


def _slice(p: ViewParams, a: int, b: int) -> ViewParams:
    return ViewParams(**{k: v[a:b] for k, v in p.__dict__.items()})


def _take(p: ViewParams, idx: np.ndarray) -> ViewParams:
    return ViewParams(**{k: v[idx] for k, v in p.__dict__.items()})


def center_view(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """No augmentation: shorter side resized to ``size`` (antialiased), centre crop → uint8 ``[n, 3, S, S]``."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for im in images:
        if im.shape[1] != size or im.shape[2] != size:
            im = TF.center_crop(TF.resize(im, [size], antialias=True), [size, size])
        out.append(im)
    return torch.stack(out) if out else torch.empty(0, 3, size, size, dtype=torch.uint8)
