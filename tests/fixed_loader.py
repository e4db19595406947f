"""A deterministic stand-in for the Trainer's stream: fixed global batches, rank r of W taking its rows of each."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class FixedLoader:
    """``steps`` global batches of ``global_batch`` smooth random 16-px images (distinct pooled features) and their
    mirrors as the positive pair; rank r of W yields rows [r·N/W, (r+1)·N/W) of each, views stacked view-major."""

    def __init__(self, rank: int, world: int, global_batch: int, steps: int) -> None:
        self.rank, self.world, self.global_batch, self.steps = rank, world, global_batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict]:
        n = self.global_batch // self.world
        for step in range(self.steps):
            g = torch.Generator().manual_seed(step)
            coarse = torch.rand(self.global_batch, 3, 4, 4, generator=g)
            x = (torch.nn.functional.interpolate(coarse, size=16, mode="bilinear") * 255).to(torch.uint8)
            views = [x, x.flip(-1)]
            yield {"views": torch.cat([v[self.rank * n:(self.rank + 1) * n] for v in views]),
                   "label": torch.zeros(n, dtype=torch.long), "key": [""] * n}
