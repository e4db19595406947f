"""`bigbatch bench layout`: images/s of the config's real train step (method, loss, optimiser) in one process
under fp32/bf16 × NCHW/NHWC (and, with ``--compile``, bf16 NHWC under ``torch.compile``), side by side in one run;
each as a ratio to fp32 NCHW."""

from __future__ import annotations

import argparse
import json
import time

SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("layout", help="train-step images/s: fp32/bf16 × NCHW/NHWC against fp32 NCHW")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="run config (default: the built-in default)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting, after 2 warm-up steps")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the config's batch_size)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true",
                   help="also bf16 NHWC with the training networks under torch.compile (compile time excluded)")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile's backend for --compile (inductor: generated C++; aot_eager: no code generation)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=run)


def images_per_s(items: list[str], precision: str, channels_last: bool, batch: int | None, steps: int,
                 compiled: bool = False, backend: str = "inductor") -> float:
    """Steady images/s of ``method.train_step`` on random uint8 views, laid out as the Trainer lays them out;
    ``compiled``: each training network under ``torch.compile(backend=backend)`` (compiled in the warm-up steps)."""
    import torch

    from cluster.commands.pretrain import split_items
    from cluster.run_config import load_run_config
    from pretrain.methods import build_method
    from pretrain.trainer import ddp_wrapper, to_device

    config, overrides = split_items(items)
    if not any(o.startswith("data.train=") for o in overrides):
        overrides = ["data.train=digits", *overrides]  # the views are random: a preset's data is never read
    cfg = load_run_config(config, [*overrides, f"precision={precision}", f"channels_last={str(channels_last).lower()}",
                                   "cluster.workers=1"])
    n, size, cpu = batch or cfg.batch_size, cfg.data.view_size or cfg.data.image_size, torch.device("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    method = build_method(cfg).to(cpu, memory_format=fmt)
    if compiled:
        for network in type(method).wrapped.values():
            getattr(method, network).compile(backend=backend)
    method.configure(steps + 2, cpu, ddp_wrapper(cpu))
    method.train()
    g = torch.Generator().manual_seed(0)
    views = to_device(torch.randint(0, 256, (method.num_views * n, 3, size, size), dtype=torch.uint8, generator=g),
                      cpu, fmt)
    batch_ = {"views": views, "label": torch.zeros(n, dtype=torch.long), "key": [""] * n}
    if cfg.data.local_views:
        local = torch.randint(0, 256, (cfg.data.local_views * n, 3, cfg.data.local_size, cfg.data.local_size),
                              dtype=torch.uint8, generator=g)
        batch_["local_views"] = to_device(local, cpu, fmt)
    for i in range(2):
        method.train_step(batch_, i)
    t0 = time.perf_counter()
    for i in range(steps):
        method.train_step(batch_, 2 + i)
    return n * steps / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the Trainer does on CPU
    rows = {f"{p}_{'nhwc' if cl else 'nchw'}": images_per_s(args.items, p, cl, args.batch, args.steps)
            for p, cl in SETTINGS}
    if args.compile:
        rows["bf16_nhwc_compiled"] = images_per_s(args.items, "bf16", True, args.batch, args.steps, compiled=True,
                                                  backend=args.compile_backend)
    base = rows["fp32_nchw"]
    out = {"bench": "layout", "config": (args.items or ["default"])[0], "threads": args.threads,
           **{f"{k}_images_per_s": round(v, 1) for k, v in rows.items()},
           **{f"{k}_over_fp32_nchw": round(v / base, 3) for k, v in rows.items() if k != "fp32_nchw"}}
    if not args.json:
        print(f"{'setting':<20}{'images/s':>10}{'ratio':>8}")
        for k, v in rows.items():
            print(f"{k:<20}{v:>10.1f}{v / base:>8.3f}")
    print(json.dumps(out))
    return 0
