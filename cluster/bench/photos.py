"""Realistic JPEG test photos, offline: random crops of the photographs scikit-learn and scikit-image ship,
re-encoded as JPEG (ImageNet-like sizes and qualities) into an image folder ``OUT/PHOTO/NAME.jpg``.

Used for the 224-px data benchmark; each source photograph is one class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def source_photos() -> dict[str, np.ndarray]:
    """RGB uint8 photographs bundled with scikit-learn and scikit-image (those that need no download)."""
    photos: dict[str, np.ndarray] = {}
    from sklearn.datasets import load_sample_images

    ds = load_sample_images()
    for name, img in zip(ds.filenames, ds.images, strict=True):
        photos[Path(name).stem] = np.asarray(img)
    try:
        from skimage import data
    except ImportError:
        return photos
    for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
                 "immunohistochemistry"):
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 — not bundled in this version (would need a download)
            continue
        if img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= 256:
            photos[name] = img[..., :3].astype(np.uint8)
    return photos


def make_photos(out_dir: str | Path, count: int = 300, seed: int = 0) -> Path:
    """``count`` JPEGs: per photo a random crop (shorter side 224–500 px, aspect 3/4–4/3, random flip),
    re-encoded at quality 75–95."""
    from PIL import Image

    out = Path(out_dir)
    photos = source_photos()
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    for i in range(count):
        name = names[i % len(names)]
        img = photos[name]
        h, w = img.shape[:2]
        side = int(rng.integers(224, min(h, w, 500) + 1))
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        ch, cw = side, min(w, int(side * aspect))
        if ch > h:
            ch = h
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[top: top + ch, left: left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(d / f"{name}_{i:05d}.jpg", quality=int(rng.integers(75, 96)))
    return out
