"""`bigbatch bench train`: images/s of the Ray-orchestrated run (W workers) against the same training loop in one
plain process with the same global batch and the same total threads, plus the fraction of step time waiting on data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="Ray-orchestrated training throughput vs one plain process")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="run config (default: the built-in default)")
    p.add_argument("--steps", type=int, default=40, help="steps per run (the first log window is warm-up)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=run)


def _steady(logs: list[dict]) -> tuple[float, float]:
    """Median images/s and data-wait fraction over log windows after the first (warm-up) one."""
    windows = logs[1:] or logs
    return (statistics.median(m["images_per_s"] for m in windows),
            statistics.median(m["data_wait_fraction"] for m in windows))


def run(args: argparse.Namespace) -> int:
    from cluster.commands.pretrain import split_items
    from cluster.launch import run_pretrain
    from cluster.run_config import load_run_config
    from pretrain.trainer import run_single_process

    config, overrides = split_items(args.items)
    log_every = max(1, args.steps // 8)
    common = [*overrides, f"steps={args.steps}", f"log_every={log_every}", f"checkpoint_every={args.steps}",
              "eval.probe=false"]
    threads = args.workers  # the plain process gets all the threads the Ray workers have together
    with tempfile.TemporaryDirectory(prefix="bigbatch-bench-train-") as tmp:
        ray_cfg = load_run_config(config, [*common, f"cluster.workers={args.workers}", "cluster.threads_per_worker=1",
                                           "cluster.cpus_per_worker=1", f"cluster.storage_path={tmp}", "name=ray"])
        plain_cfg = load_run_config(config, [*common, "cluster.workers=1", f"cluster.threads_per_worker={threads}"])
        t0 = time.perf_counter()
        _, hooks = run_single_process(plain_cfg, Path(tmp) / "plain")
        plain_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_dir = run_pretrain(ray_cfg, show_progress=False, probe=False)
        ray_wall = time.perf_counter() - t0
        ray_logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        ray_logs = [m for m in ray_logs if "images_per_s" in m]
    plain_ips, plain_wait = _steady(hooks.logs)
    ray_ips, ray_wait = _steady(ray_logs)
    result = {
        "bench": "train", "config": config or "default", "global_batch": ray_cfg.batch_size, "steps": args.steps,
        "workers": args.workers, "plain_threads": threads,
        "plain_images_per_s": round(plain_ips, 1), "ray_images_per_s": round(ray_ips, 1),
        "ray_over_plain": round(ray_ips / plain_ips, 3),
        "ray_images_per_s_per_worker": round(ray_ips / args.workers, 1),
        "plain_data_wait_fraction": round(plain_wait, 4), "ray_data_wait_fraction": round(ray_wait, 4),
        "plain_wall_s": round(plain_wall, 1), "ray_wall_s_incl_startup": round(ray_wall, 1),
    }
    if not args.json:
        print(f"{'':28s}{'images/s':>10s}{'data wait':>11s}{'wall s':>9s}")
        print(f"{'plain process (' + str(threads) + ' threads)':28s}{plain_ips:10.1f}{plain_wait:11.1%}{plain_wall:9.1f}")
        print(f"{'Ray Train (' + str(args.workers) + ' workers)':28s}{ray_ips:10.1f}{ray_wait:11.1%}{ray_wall:9.1f}")
        print(f"ratio Ray / plain: {ray_ips / plain_ips:.3f}   (target ≥ 0.9; data wait target < 5%)")
    print(json.dumps(result))
    return 0
