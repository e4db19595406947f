"""The class-stratified split of the shard writer's holdout and of the probe's validation set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_split(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, split off), each ascending: per class, ``round(fraction × n_class)`` picks of a permutation
    seeded by ``(seed, 7919)`` are split off (so a class of one or two samples may keep them all)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction {fraction}: not in [0, 1)")
    rng = np.random.default_rng([seed, 7919])
    labels_arr = np.asarray(labels)
    hold: list[int] = []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        k = int(round(fraction * len(idx)))
        hold.extend(rng.permutation(idx)[:k].tolist())
    hold_set = set(hold)
    return [i for i in range(len(labels_arr)) if i not in hold_set], sorted(hold)
