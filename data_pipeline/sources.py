"""Image sources: an indexable set of samples ``(key, image bytes, ext, label)`` with known labels.

A source knows every sample's label before any image is read (so the writer can split class-stratified),
and ``read(i)`` returns the stored bytes of sample ``i``: files as they are on disk (no re-encoding),
arrays and the scikit-learn digits encoded once as PNG. A source that does not exist or holds no image
raises UserInputError naming it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data_pipeline.errors import UserInputError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "ppm", "pgm", "tif", "tiff")


class Sample(NamedTuple):
    key: str
    data: bytes
    ext: str
    label: int


@dataclass
class Source:
    """``names[i]`` (a human name, turned into a safe key by the writer), ``labels[i]``, ``read(i) -> (bytes, ext)``;
    an image folder also lists its ``files`` (for header checks without reading whole files) and the files it
    ``ignored`` (no image extension, or outside a class folder)."""

    name: str
    classes: list[str]
    names: list[str]
    labels: list[int]
    read: Callable[[int], tuple[bytes, str]]
    files: list[Path] | None = None
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            data, ext = self.read(i)
            yield Sample(self.names[i], data, ext, self.labels[i])


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 array [H, W] (grey) or [H, W, 3] (RGB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def check_source(spec: str) -> None:
    """A source spec that names a local path which is not a directory raises UserInputError naming it (cheap: no
    listing, no import), so a command can answer a mistyped path before its heavy imports."""
    if spec != "digits" and not spec.startswith("torchvision:"):
        _check_folder(Path(spec))


def _check_folder(root: Path) -> None:
    if not root.is_dir():
        raise UserInputError(f"{root}: {'not a directory' if root.exists() else 'no such directory'} "
                             "(expected an image folder ROOT/CLASS/NAME.jpg, 'digits' or torchvision:NAME:ROOT)")


def image_folder(root: str | Path) -> Source:
    """``root/CLASS/NAME.ext``: classes are the sorted sub-directories; bytes are read as stored."""
    root = Path(root)
    _check_folder(root)
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    classes = [p.name for p in entries if p.is_dir()]
    if not classes:
        raise UserInputError(f"{root}: no class sub-directories (expected ROOT/CLASS/NAME.jpg)")
    ignored = [str(p) for p in entries if not p.is_dir()]
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        for p in sorted((root / cls).rglob("*")):
            if not p.is_file():
                continue
            if p.suffix[1:].lower() in IMAGE_EXTS and not any(part.startswith(".") for part in p.relative_to(root).parts):
                paths.append(p)
                labels.append(label)
            else:
                ignored.append(str(p))
    if not paths:
        raise UserInputError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) under the class directories")
    names = [f"{p.parent.name}/{p.stem}" for p in paths]

    def read(i: int) -> tuple[bytes, str]:
        return paths[i].read_bytes(), paths[i].suffix[1:].lower()

    return Source(root.name or "images", classes, names, labels, read, files=paths, ignored=ignored)


def arrays(images: np.ndarray | Sequence[np.ndarray], labels: Sequence[int], classes: Sequence[str] | None = None,
           name: str = "arrays") -> Source:
    """In-memory uint8 images ([N, H, W] or [N, H, W, 3]) with integer labels, stored as PNG."""
    labels = [int(v) for v in labels]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    classes = list(classes) if classes is not None else [str(c) for c in range(max(labels, default=-1) + 1)]

    def read(i: int) -> tuple[bytes, str]:
        img = np.asarray(images[i])
        if img.dtype != np.uint8:
            raise TypeError(f"image {i}: dtype {img.dtype}, expected uint8")
        return png_bytes(img), "png"

    return Source(name, classes, [f"{name}_{i:07d}" for i in range(len(labels))], labels, read)


def digits() -> Source:
    """scikit-learn's bundled 1797 handwritten digits (8×8, 17 grey levels → 0..255), stored as PNG."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    src = arrays(images, d.target, classes=[str(c) for c in range(10)], name="digits")
    src.names = [f"digit{t}_{i:04d}" for i, t in enumerate(d.target)]
    return src


def torchvision_dataset(name: str, root: str | Path, train: bool = True) -> Source:
    """A torchvision dataset already on disk (``download=False``), e.g. CIFAR10, CIFAR100, MNIST, FashionMNIST."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if cls is None:
        raise UserInputError(f"torchvision:{name}: torchvision.datasets has no {name!r}")
    try:
        ds = cls(root=str(root), train=train, download=False)
    except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found or corrupted"
        raise UserInputError(f"torchvision:{name}:{root}: cannot load ({exc})") from None
    data = np.asarray(ds.data)
    labels = [int(t) for t in ds.targets]
    classes = [str(c) for c in getattr(ds, "classes", range(max(labels) + 1))]
    split = "train" if train else "test"
    return arrays(data, labels, classes, name=f"{name.lower()}_{split}")


def open_source(spec: str | Source) -> Source:
    """``digits`` | ``torchvision:NAME:ROOT[:test]`` | an image-folder path | a :class:`Source`."""
    if isinstance(spec, Source):
        return spec
    spec = str(spec)
    if spec == "digits":
        return digits()
    if spec.startswith("torchvision:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "test"):
            raise UserInputError(f"{spec}: expected torchvision:NAME:ROOT[:test]")
        return torchvision_dataset(parts[1], parts[2], train=not (len(parts) == 4 and parts[3] == "test"))
    return image_folder(spec)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(name: str) -> str:
    """A tar-member-safe key: letters, digits, ``_``, ``-`` only (no dots: WebDataset splits keys at the first dot)."""
    key = _UNSAFE.sub("_", name).strip("_")
    return key or "sample"
