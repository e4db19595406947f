"""`bigbatch bench step`: the loss's share of a training step, loss / (loss + encoder·B), against the global batch B,
for each encoder and loss; the crossover batch where the loss costs as much as the network."""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_ENCODERS = ("bb_convnet_deep@32", "resnet18@224", "resnet50@224")
DEFAULT_MEASURED = (256, 512, 1024, 2048, 4096)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "step", help="loss share of a training step vs batch size; crossover batch per encoder and loss",
        description="Measures, in one run, each encoder's forward+backward time per pair (2 views + SimCLR's "
                    "projector, at a small batch, scaled linearly with B) and each loss's forward+backward time at "
                    "global batch B (one fresh process per configuration, as `bench losses`), then prints the loss's "
                    "share of the step for B = 256, 1k, 4k, … (* = projected from the log-log slope fitted to the "
                    "largest measured batches) and the crossover B where loss time = encoder time.")
    p.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS), metavar="NAME@SIZE",
                   help=f"encoders and image sizes (default: {' '.join(DEFAULT_ENCODERS)})")
    p.add_argument("--pairs", type=int, default=None,
                   help="pairs per encoder measurement (default: 64 at ≤ 64 px, 8 above)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_MEASURED),
                   help="global batches at which the losses are measured (default: 256 … 4096)")
    p.add_argument("--losses", nargs="+", default=None,
                   help="a subset of the named losses (default: all; an unknown name lists them)")
    p.add_argument("--max-batch", type=int, default=1 << 24, help="largest B of the table (default 16M)")
    p.add_argument("--dim", type=int, default=128, help="projection dim (the loss's input width; default 128)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the encoder's precision")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's default)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cluster.bench.loss_scaling import LOSSES
    from cluster.bench.loss_scaling_report import sweep
    from cluster.bench.step_share import (
        LossModel,
        measure_encoder,
        parse_encoder,
        report,
        table,
        table_batches,
    )

    losses = args.losses or list(LOSSES)
    bad = [x for x in losses if x not in LOSSES]
    try:
        if bad:
            raise ValueError(f"unknown loss {bad[0]!r} (choose from {', '.join(LOSSES)})")
        sizes = [parse_encoder(e)[1] for e in args.encoders]
        if min(args.batch_sizes) < 2 or (args.pairs is not None and args.pairs < 1):
            raise ValueError("--batch-sizes must be ≥ 2 and --pairs ≥ 1")
    except ValueError as exc:
        print(f"bigbatch bench step: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the Trainer does on CPU
    threads = torch.get_num_threads()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    say(f"encoder forward+backward per pair (2 views + projector to d={args.dim}, {args.precision}, NHWC, "
        f"{threads} threads), measured at a small batch and scaled linearly with B:")
    encoders = []
    for spec, size in zip(args.encoders, sizes, strict=True):
        try:
            enc = measure_encoder(spec, args.pairs or (64 if size <= 64 else 8), args.repeats, args.precision,
                                  proj_dim=args.dim)
        except ValueError as exc:  # an unknown encoder name
            print(f"bigbatch bench step: {spec}: {exc}", file=sys.stderr)
            return 2
        encoders.append(enc)
        say(f"  {spec:22s}{1000 * enc.seconds_per_pair:9.2f} ms/pair   (measured at {enc.pairs} pairs)")
    say(f"loss forward+backward at global batch B (d={args.dim}, one process each), measured at "
        f"{', '.join(map(str, sorted(args.batch_sizes)))}:")
    results = sweep(args.batch_sizes, args.dim, 1, losses, repeats=args.repeats, threads=threads,
                    on_result=None if args.json else
                    (lambda r: say(f"  {r.config.loss:18s} B={r.config.batch:<7d} "
                                   + (f"{1000 * r.time_s:10.1f} ms" if r.time_s else f"skipped: {r.skipped}"))))
    models = [LossModel.from_results(loss, results) for loss in losses]
    batches = table_batches(min(args.batch_sizes), args.max_batch)
    out = {"bench": "step", "threads": threads, "dim": args.dim, "precision": args.precision,
           **report(encoders, models, batches)}
    say("loss share of a training step = loss / (loss + encoder·B), in %; * = projected from the fitted slope")
    say(table(out, batches))
    print(json.dumps(out))
    return 0
