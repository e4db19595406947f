"""Progressive view size: the global training views' side grows from ``data.view_size_start`` to the view size
over the first ``data.view_ramp`` of the schedule, in steps of ``SIDE_STEP`` px (FFCV's progressive resizing):

    side(p) = start + SIDE_STEP · ⌊(end − start) · p / (ramp · SIDE_STEP)⌋  for p < ramp,  end from p ≥ ramp

with p ∈ [0, 1] the position in the lr schedule (steps, or the budget's clock under ``schedule_by=budget``). The
stream makes views at the full side; the trainer shrinks them (bilinear, antialiased) before the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIDE_STEP = 4


@dataclass(frozen=True)
class ViewRamp:
    start: int
    end: int
    ramp: float

    def side(self, position: float) -> int:
        """The views' side at ``position`` (fraction of the schedule, clipped to [0, 1])."""
        if position >= self.ramp or self.start >= self.end:
            return self.end
        grown = (self.end - self.start) * max(0.0, position) / self.ramp
        return self.start + SIDE_STEP * int(grown // SIDE_STEP)


def resize_views(views: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 views ``[N, C, S, S]`` → ``[N, C, side, side]`` uint8 (unchanged when already ``side``), same memory format."""
    if views.shape[-1] == side and views.shape[-2] == side:
        return views
    fmt = torch.channels_last if views.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = F.interpolate(views.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).contiguous(memory_format=fmt)
