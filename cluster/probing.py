"""Probes of a run: the labelled data they use, every k-th checkpoint while training, and the final one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.config import RunConfig


def probe_sources(cfg: RunConfig) -> tuple[str, str] | None:
    """(train, test) shards of the probe; None when the config names no held-out data."""
    d = cfg.data
    if d.train == "digits":
        from data_pipeline.builtin import ensure_digits
        train, holdout = ensure_digits()
        return d.probe_train or str(train), d.probe_test or str(holdout)
    if d.probe_test:
        return d.probe_train or d.train, d.probe_test
    return None


class PeriodicProbe:
    """Probe every k-th checkpoint as it appears in a local run dir (``eval.every_k_checkpoints``); results go to
    metrics.jsonl as ``{"event": "probe", "step": …}`` lines. Runs on the driver, between progress polls."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir, self.seen = cfg, run_dir, set()
        self.sources = probe_sources(cfg)

    def poll(self, sink: Any) -> None:
        if self.sources is None:
            return
        for d in sorted(p for p in self.run_dir.glob("checkpoint_*") if (p / "state.pt").is_file()):
            if d.name in self.seen:
                continue
            self.seen.add(d.name)
            try:
                step = _checkpoint_step(d)
                if (step // self.cfg.checkpoint_every) % self.cfg.eval.every_k_checkpoints:
                    continue
                from eval.run_probe import probe_run
                res = probe_run(d, *self.sources, knn=self.cfg.eval.knn, seed=self.cfg.seed)
            except (OSError, ValueError, RuntimeError) as exc:  # pruned by Ray while being read: say so
                sink.event("probe_skipped", checkpoint=d.name, reason=str(exc))
                continue
            sink.event("probe", step=step, probe_top1=res["method"]["top1"], probe_top5=res["method"]["top5"],
                       knn_top1=res["method"].get("knn_top1"))


def _checkpoint_step(directory: Path) -> int:
    import torch
    return int(torch.load(directory / "state.pt", map_location="cpu", weights_only=True)["step"])


def final_probe(cfg: RunConfig, run_dir: Path, ckpt_dir: Path) -> None:
    sources = probe_sources(cfg)
    if sources is None:
        print(f"probe skipped: no data.probe_test in the config of {cfg.name}")
        return
    from eval.run_probe import probe_run
    probe_run(ckpt_dir, sources[0], sources[1], run_dir=run_dir, baselines=tuple(cfg.eval.baselines),
              knn=cfg.eval.knn, seed=cfg.seed)
