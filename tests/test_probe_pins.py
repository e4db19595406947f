"""Periodic probes pin their checkpoint in the run's storage as the driver sees it: Ray pruning the checkpoint
before the probe task starts (a busy cluster) no longer loses the probe; a checkpoint gone before it could be
pinned is a probe_skipped report naming it; no pin outlives its task."""

from __future__ import annotations

import shutil

from cluster.probing import PIN_DIR, ProbeTasks
from cluster.run_config import load_run_config
from pretrain.trainer import run_single_process

TINY = ["model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=16"]


def test_a_periodic_probe_outlives_its_checkpoint_pruned_before_the_task_starts(ray_local, tmp_path, digits_shards):
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}",
                                 f"data.probe_test={digits_shards['holdout']}", "batch_size=32", "steps=4",
                                 "checkpoint_every=2", "cluster.workers=1", "eval.every_k_checkpoints=1",
                                 "eval.num_cpus=1", "cluster.num_to_keep=5"])
    run_single_process(cfg, tmp_path)
    results, errors = [], []
    probes = ProbeTasks(cfg, str(tmp_path), results.append, lambda ckpt, why: errors.append((ckpt, why)))
    first, second = "checkpoints/checkpoint_00000002", "checkpoints/checkpoint_00000004"
    probes.submit(first)
    shutil.rmtree(tmp_path / first)  # pruned at once, long before a Ray task could have copied it
    probes.submit(second)
    probes.submit("checkpoints/checkpoint_00000006")  # gone (or never there) when the driver pins it
    probes.collect(wait=True)
    assert sorted((r["step"], r["checkpoint"]) for r in results) == [(2, f"{tmp_path}/{first}"),
                                                                     (4, f"{tmp_path}/{second}")]
    assert all(0 < r["method"]["top1"] <= 1 for r in results)
    assert [(c, why.split(":")[0]) for c, why in errors] == [(f"{tmp_path}/checkpoints/checkpoint_00000006",
                                                              "could not pin it")]
    assert not (tmp_path / PIN_DIR).exists() or not any((tmp_path / PIN_DIR).iterdir())
    assert (tmp_path / second).is_dir()  # the original is left to Ray's own pruning
