"""Probing a checkpoint (and the baselines) on labelled shards; results into the run directory.

``probe_run`` extracts frozen features of the train and test shards once per representation, runs the linear
probe and the kNN monitor; ``write_probe`` puts the results in a run directory: ``probe.json`` and a
``{"event": "probe", …}`` line in metrics.jsonl. The checkpoint may be a local path or a URL (s3://…/RUN).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from data_pipeline.errors import UserInputError
from eval.baselines import PCA, PPCA, pixels, random_encoder
from eval.features import extract_features
from eval.knn import knn_top1
from eval.probe import linear_probe
from pretrain.checkpoint import load_method
from pretrain.config import BASELINES
from pretrain.export import is_export, load_encoder
from pretrain.run_store import checkpoint_location, local_checkpoint, write_text_atomic


def evaluate_features(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, *, knn: bool,
                      seed: int, device: str) -> dict:
    t0 = time.perf_counter()
    out = linear_probe(xtr, ytr, xte, yte, seed=seed, device=device).as_dict()
    if knn:
        out["knn_top1"] = knn_top1(xtr, ytr, xte, yte, device=device)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def check_baselines(names: Sequence[str]) -> None:
    """A name that is not one of ``BASELINES`` is a UserInputError naming it."""
    for name in names:
        if name not in BASELINES:
            raise UserInputError(f"baseline {name!r}: not one of {', '.join(BASELINES)}")


def baseline_features(name: str, train: str, test: str, image_size: int, *, encoder: str = "bb_convnet_small",
                      small_stem: bool = True, norm: str = "batch", components: int = 100, seed: int = 0,
                      device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    check_baselines([name])
    rep: Callable[[torch.Tensor], torch.Tensor] = pixels
    if name == "random-init":
        rep = random_encoder(encoder, small_stem, norm, seed).to(device)
    xtr, ytr = extract_features(rep, train, image_size, device=device)
    xte, yte = extract_features(rep, test, image_size, device=device)
    if name in ("pca", "ppca"):
        m = min(components, xtr.shape[1] - 1, xtr.shape[0] - 1)
        if name == "pca":
            model = PCA.fit(xtr, m)
            xtr, xte = model.transform(xtr), model.transform(xte)
        else:
            model = PPCA.fit(xtr, m)
            xtr, xte = model.posterior_mean(xtr), model.posterior_mean(xte)
    return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte


def probe_run(checkpoint: str | Path | None, train_source: str, test_source: str, *, run_dir: str | Path | None = None,
              baselines: Sequence[str] = (), knn: bool = True, seed: int = 0, device: str = "cpu",
              image_size: int | None = None, encoder: str | None = None) -> dict:
    """Probe a checkpoint (run dir, checkpoint dir, state.pt or an exported encoder's directory, local or at a URL;
    None: baselines only) and the named baselines."""
    check_baselines(baselines)
    results: dict = {"train": str(train_source), "test": str(test_source), "seed": seed, "baselines": {}}
    small_stem, norm = True, "batch"
    if checkpoint is not None:
        if is_export(checkpoint):
            represent = load_encoder(checkpoint, device=device)
            model = represent.config["bigbatch"]["encoder"]
            size, results["checkpoint"] = represent.image_size, str(checkpoint)
        else:
            location = checkpoint_location(checkpoint)
            with local_checkpoint(location) as local:
                method, cfg = load_method(local, device=device)
            represent, model, size = method.represent, cfg.model.model_dump(), cfg.data.image_size
            results["checkpoint"] = location
        image_size = image_size or size
        encoder, small_stem, norm = encoder or model["encoder"], model["small_stem"], model["norm"]
        xtr, ytr = extract_features(represent, train_source, image_size, device=device)
        xte, yte = extract_features(represent, test_source, image_size, device=device)
        results["method"] = evaluate_features(xtr, ytr, xte, yte, knn=knn, seed=seed, device=device)
    if image_size is None:
        raise ValueError("image_size is needed when probing baselines without a checkpoint")
    results["image_size"] = image_size
    for name in baselines:
        feats = baseline_features(name, train_source, test_source, image_size, encoder=encoder or "bb_convnet_small",
                                  small_stem=small_stem, norm=norm, seed=seed, device=device)
        results["baselines"][name] = evaluate_features(*feats, knn=knn, seed=seed, device=device)
    if run_dir is not None:
        write_probe(run_dir, results)
    return results


def write_probe(run_dir: str | Path, results: dict) -> None:
    """``probe.json`` (through a temp file) and the ``{"event": "probe", …}`` line of metrics.jsonl."""
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / "probe.json", json.dumps(results, indent=2))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "event": "probe", **flat_results(results)}) + "\n")


def flat_results(results: dict) -> dict:
    """The headline figures under the names metrics.jsonl and the trackers use (probe_top1, knn_top1, pixels_top1…)."""
    out = {}
    if "method" in results:
        out.update(probe_top1=results["method"]["top1"], probe_top5=results["method"]["top5"],
                   knn_top1=results["method"].get("knn_top1"))
    for name, r in results["baselines"].items():
        out[f"{name}_top1"] = r["top1"]
    return out
