"""Frozen features over a shard stream: every sample once, centre view (no augmentation), in stream order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from data_pipeline.errors import UserInputError
from data_pipeline.manifest import UNLABELLED
from data_pipeline.stream import StreamSpec, make_loader


@torch.no_grad()
def extract_features(represent: Callable[[torch.Tensor], torch.Tensor], source: str, image_size: int,
                     batch_size: int = 256, device: str | torch.device = "cpu",
                     num_workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [n, D], y int64 [n]) with ``represent(uint8 images [b, 3, H, W]) -> [b, D]``; a sample without
    a label is a UserInputError naming ``source``."""
    spec = StreamSpec(source=source, batch_size=batch_size, num_views=1, augment=False, shuffle=False,
                      equalize=False, image_size=image_size, num_workers=num_workers,
                      pin_memory=torch.device(device).type == "cuda")
    feats, labels = [], []
    for batch in make_loader(spec):
        x = batch["views"].to(device, non_blocking=True)
        feats.append(represent(x).float().flatten(1).cpu())
        labels.append(batch["label"].cpu())
    if not feats:
        raise ValueError(f"{source}: no samples to extract features from")
    y = torch.cat(labels).numpy().astype(np.int64)
    if (missing := int((y == UNLABELLED).sum())) > 0:
        raise UserInputError(f"{source}: {missing} of {len(y)} samples have no label (no .cls member and none in "
                             "manifest.json): the probe needs labelled shards")
    return torch.cat(feats).numpy(), y
