"""Training checkpoints: one directory per checkpoint, written atomically, read with weights_only=True.

Layout of a checkpoint directory:
    state.pt          model, optimisers, schedulers, step, stream position, config (rank 0)
    rng-rank{r}.pt    torch / numpy / python RNG state of rank r, and the CUDA generator of its own GPU (every rank
                      writes its own)
Everything is stored as tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)``
reads it and refuses any pickled object.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.errors import UserInputError
from pretrain.config import from_stored
from pretrain.methods import build_method
from pretrain.run_store import STATE_FILE

FORMAT_VERSION = 1


class CheckpointError(UserInputError):
    """A path that is not a readable bigbatch checkpoint (missing, truncated, or holding pickled objects)."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` through a temp file + fsync + rename: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The process's RNG states in weights_only-loadable form; with a CUDA ``device``, that GPU's generator only
    (co-located ranks see the same GPUs, and a restarted group may see fewer: other GPUs are other ranks' business)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _py_state_to_lists(random.getstate()),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _py_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what ``rng_state`` saved; the saved CUDA generator goes to ``device`` (this rank's GPU, whatever its
    index now). Older checkpoints hold a list, one state per GPU visible then: the entry at the device's index."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, list):
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= len(cuda):
            warnings.warn(f"checkpoint holds CUDA RNG states of {len(cuda)} GPUs, none for cuda:{index}: "
                          "its generator keeps its seed", stacklevel=2)
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def seed_rank_rng(seed: int, step: int, rank: int) -> None:
    """Seed this process's torch / numpy / python RNGs from (seed, step, rank): the state of a rank whose saved one
    cannot carry over (a new rank, or a checkpoint written with another world size). The views do not use these
    generators (they are keyed per sample), so the global batches stay the same."""
    key = int(np.random.SeedSequence([seed, step, rank, 0xE1A5]).generate_state(1, dtype=np.uint64)[0] >> 1)
    torch.manual_seed(key)
    np.random.seed(key % 2**32)
    random.seed(key)


def save_checkpoint(directory: Path, *, rank: int, method_state: dict[str, Any] | None, step: int,
                    stream: dict[str, int], config: dict[str, Any], extra: dict[str, Any] | None = None,
                    device: torch.device | None = None) -> Path:
    """Write this rank's part of a checkpoint into ``directory`` (rank 0: the state; every rank: its RNG, with its
    CUDA ``device``'s generator)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save(rng_state(device), directory / f"rng-rank{rank}.pt")
    if rank == 0:
        assert method_state is not None
        atomic_save({"format": FORMAT_VERSION, "step": step, "stream": dict(stream), "config": config,
                     "method": method_state, "extra": extra or {}}, directory / STATE_FILE)
    return directory


def _load(path: Path) -> Any:
    """torch.load with weights_only=True; a file it refuses or cannot read is a CheckpointError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled objects; a truncated file fails to unzip
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: cannot be loaded as a weights-only bigbatch checkpoint: {reason}") from exc


def _load_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a bigbatch checkpoint (no {STATE_FILE})")
    state = _load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: unknown checkpoint format {found}")
    return state


def load_checkpoint(directory: Path, rank: int = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state, this rank's RNG state or None). Raises CheckpointError naming the file if it is not a bigbatch
    checkpoint or holds anything but tensors, numbers, strings, lists and dicts."""
    directory = Path(directory)
    state = _load_state(directory)
    rng_path = directory / f"rng-rank{rank}.pt"
    rng = _load(rng_path) if rng_path.is_file() else None
    return state, rng


def latest_checkpoint(path: Path) -> tuple[Path, dict[str, Any]]:
    """(directory, state) of a checkpoint dir or state.pt itself, or of the newest readable ``checkpoint_*`` dir
    (highest step) under a run dir; an unreadable newer one is skipped with a note on stderr."""
    path = Path(path)
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if (path / STATE_FILE).is_file():
        return path, _load_state(path)
    best, skipped = None, []
    for d in [*path.glob("checkpoint_*"), *path.glob("checkpoints/checkpoint_*")]:
        if not (d / STATE_FILE).is_file():
            continue
        try:
            state = _load_state(d)
        except CheckpointError as exc:
            skipped.append((d, str(exc)))
            continue
        key = (int(state["step"]), d.stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, d, state)
    if best is None:
        if skipped:
            raise CheckpointError(f"{path}: no readable bigbatch checkpoint; " + "; ".join(r for _, r in skipped))
        raise CheckpointError(f"{path}: no bigbatch checkpoint found (expected {STATE_FILE} or checkpoint_*/{STATE_FILE})")
    for d, reason in skipped:
        print(f"bigbatch: skipping unreadable checkpoint {d.name} ({reason}); using {best[1].name} "
              f"(step {best[0][0]})", file=sys.stderr)
    return best[1], best[2]


def checkpoint_step(directory: str | Path) -> int:
    """The optimiser step a checkpoint directory was written at (its state file memory-mapped, not read whole)."""
    return int(torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)["step"])


def find_latest_checkpoint(path: Path) -> Path:
    """A checkpoint dir itself, or the newest readable ``checkpoint_*`` dir (highest step) under a run dir."""
    return latest_checkpoint(path)[0]


def load_method(path: str | Path, device: str | torch.device = "cpu"):
    """(method in eval mode, RunConfig) from a run dir, checkpoint dir or state.pt — for the probe and export."""
    _, state = latest_checkpoint(Path(path))
    cfg = from_stored(state["config"])
    method = build_method(cfg)
    method.load_state_dict(state["method"]["model"])
    return method.to(device).eval(), cfg
