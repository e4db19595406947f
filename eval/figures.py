"""Figure helpers: numeric axes, and writing a figure so that an interrupted write never leaves a PNG that reads
as valid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def numeric(values: list[Any]) -> bool:
    """Whether every value is a number (bools are not): such an axis is plotted as numbers, else as categories."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Lay out ``fig``, write it to a temporary name beside ``path``, rename it into place and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
