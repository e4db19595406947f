"""Image bytes → uint8 RGB tensor ``[3, H, W]`` (one decode per image).

Small images go through ``torchvision.io.decode_image`` (libjpeg-turbo / libpng, no PIL object). A JPEG whose
crops will be shrunk at least 2× is decoded by PIL in draft mode (libjpeg's DCT scaling to 1/2, 1/4 or 1/8),
which decodes fewer pixels for the same views.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from data_pipeline.sources import IMAGE_EXTS

# torchvision 0.29 deprecates its decoders in favour of TorchCodec (not a dependency here); they still work.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


class UndecodableImage(ValueError):
    """The bytes are not a decodable image."""


def image_member(files: dict[str, bytes | None]) -> tuple[str, bytes | None] | None:
    """The (ext, bytes) of the sample's image member, or None when it has none."""
    for ext in IMAGE_EXTS:
        if ext in files:
            return ext, files[ext]
    return None


def decode(data: bytes) -> torch.Tensor:
    """uint8 ``[3, H, W]``."""
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception as exc:  # noqa: BLE001 — torchvision raises RuntimeError for corrupt data
        return _decode_pil(data, exc)


def reason(exc: BaseException) -> str:
    """A short reason why bytes did not decode (PIL's wording; its unknown-format error without the object repr)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a known image format"
    return f"{type(exc).__name__}: {exc}"


def _decode_pil(data: bytes, first: Exception | None = None) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 — PIL's error says more than torchvision's ``first``
        raise UndecodableImage(reason(exc)) from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def image_size(data: bytes) -> tuple[int, int]:
    """(H, W) from the header only."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except Exception as exc:  # noqa: BLE001
        raise UndecodableImage(reason(exc)) from exc


def decode_reduced(data: bytes, reduce: int) -> torch.Tensor:
    """A JPEG decoded at about 1/``reduce`` of its size (``reduce`` ∈ {1, 2, 4, 8}); other formats at full size."""
    if reduce <= 1:
        return decode(data)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // reduce), max(1, im.height // reduce)))
            im = im.convert("RGB")
            arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001
        raise UndecodableImage(reason(exc)) from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)
