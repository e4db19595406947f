"""`bigbatch bench losses`: forward+backward time and peak memory of each loss against the batch size."""

from __future__ import annotations

import argparse
import json
import os

from data_pipeline.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("losses", help="O(B²) vs O(B) losses: time, peak memory, bytes sent vs batch size")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="images per global batch")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--world-size", type=int, default=1, help="run each configuration under W processes")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: W gloo processes; cuda: W NCCL processes, rank r on GPU r (needs W GPUs)")
    p.add_argument("--losses", nargs="+", default=None,
                   help="a subset of the named losses (default: all; an unknown name lists them)")
    p.add_argument("--block-size", type=int, default=None,
                   help="ranking-blockwise's tile (default: the run config's loss.block_size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-quadratic", type=int, default=None, help="largest B for the O(B²) forms (default: 8192 plain, 65536 blockwise)")
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cluster.bench.loss_scaling import LOSSES, QUADRATIC
    from cluster.bench.loss_scaling_report import DEFAULT_BATCHES, HEADER, plot, row, summary, sweep

    losses = args.losses or list(LOSSES)
    unknown = [x for x in losses if x not in LOSSES]
    if unknown:
        raise UserInputError(f"--losses: unknown loss {unknown[0]!r} (choose from {', '.join(LOSSES)})")
    problem = device_problem(args.device, args.world_size)
    if problem:
        raise UserInputError(problem)
    caps = {name: args.max_quadratic for name in QUADRATIC} if args.max_quadratic else None
    if not args.json:
        where = "gloo on CPU" if args.device == "cpu" else "NCCL, one GPU per rank"
        print(f"d={args.dim}, world size {args.world_size} ({where}), torch threads {os.cpu_count()}; "
              "each configuration in its own process(es)")
        print(HEADER)
    results = sweep(args.batch_sizes or DEFAULT_BATCHES, args.dim, args.world_size, losses, args.block_size,
                    args.repeats, caps, on_result=None if args.json else (lambda r: print(row(r), flush=True)),
                    device=args.device)
    out = summary(results, args.dim, args.world_size, args.device)
    if args.plot:
        plot(results, args.plot, f"loss scaling, d={args.dim}, world size {args.world_size}")
        out["plot"] = args.plot
    if not args.json:
        print("log-log slopes (B = 4,096 … 1,048,576):")
        for loss, s in out["slopes_4096_to_1M"].items():
            print(f"  {loss:18s} time {s['time_slope']}   memory {s['memory_slope']}")
    print(json.dumps({k: v for k, v in out.items() if k != "results"}))
    return 1 if out.get("failed") else 0


def device_problem(device: str, world_size: int) -> str | None:
    """Why ``--device``/``--world-size`` cannot run here (NCCL: one GPU per rank), or None."""
    if world_size < 1:
        return f"--world-size {world_size}: must be >= 1"
    if device != "cuda":
        return None
    import torch
    if not torch.cuda.is_available():
        return "--device cuda: no CUDA GPU is visible to this process (use --device cpu)"
    if world_size > torch.cuda.device_count():
        return (f"--device cuda --world-size {world_size}: needs one GPU per rank, {torch.cuda.device_count()} "
                "visible (CUDA_VISIBLE_DEVICES)")
    return None
