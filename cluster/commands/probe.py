"""`bigbatch probe RUN|CHECKPOINT|EXPORT_DIR --train SHARDS --test SHARDS [--baseline …]`: linear probe + kNN; the run,
checkpoint or export may be a URL (s3://bucket/runs/NAME)."""

from __future__ import annotations

import argparse
import json

from data_pipeline.builtin import resolve_builtin
from data_pipeline.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("probe", help="linear probe and kNN of a checkpoint's frozen features (and baselines)")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="run directory, checkpoint dir, state.pt, or a directory written by `bigbatch export`; local or a URL")
    p.add_argument("--train", required=True, help="labelled training shards ('digits' for the built-in split)")
    p.add_argument("--test", required=True, help="held-out shards ('digits-holdout' for the built-in split)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME",
                   help="also probe a classical baseline, repeatable (the names of the config's eval.baselines)")
    p.add_argument("--encoder", default=None, help="architecture of random-init without a checkpoint")
    p.add_argument("--image-size", type=int, default=None, help="needed without a checkpoint")
    p.add_argument("--no-knn", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--every-checkpoint", action="store_true",
                   help="probe each retained checkpoint of the run: accuracy against wall time, into the run's "
                   "probe_curve.json (`bigbatch compare --plot-time` draws it)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is None and not args.baseline:
        raise UserInputError("give a checkpoint/run directory, or --baseline")
    if args.checkpoint is None and args.image_size is None:
        raise UserInputError("--image-size is needed without a checkpoint")
    from data_pipeline.manifest import load_source
    from pretrain.run_store import require_local

    if args.checkpoint is not None:
        require_local(args.checkpoint)
    for shards in (args.train, args.test):  # wrong paths fail here, before the torch import
        load_source(shards)
    import torch

    from eval.run_probe import probe_run

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.every_checkpoint:
        return _every_checkpoint(args, device)
    res = probe_run(args.checkpoint, resolve_builtin(args.train), resolve_builtin(args.test), baselines=args.baseline,
                    knn=not args.no_knn, seed=args.seed, device=device, image_size=args.image_size,
                    encoder=args.encoder)
    if not args.json:
        print(f"{'representation':16s} {'top-1':>7s} {'top-5':>7s} {'kNN':>7s} {'L2':>7s} {'dim':>6s}")
        rows = ([("checkpoint", res["method"])] if "method" in res else []) + list(res["baselines"].items())
        for name, r in rows:
            knn = f"{100 * r['knn_top1']:6.1f}%" if "knn_top1" in r else "      —"
            print(f"{name:16s} {100 * r['top1']:6.1f}% {100 * r['top5']:6.1f}% {knn} {r['l2']:7.0e} {r['dim']:6d}")
    print(json.dumps(res))
    return 0


def _every_checkpoint(args: argparse.Namespace, device: str) -> int:
    from eval.probe_curve import probe_curve, write_curve

    if args.checkpoint is None or args.baseline:
        raise UserInputError("--every-checkpoint probes a run directory's checkpoints: give the run, and no --baseline")
    if not args.json:
        print(f"{'checkpoint':38s} {'step':>7s} {'time s':>8s} {'top-1':>7s} {'kNN':>7s}")

    def show(p: dict) -> None:
        if not args.json:
            knn = f"{100 * p['knn_top1']:6.1f}%" if p.get("knn_top1") is not None else "      —"
            print(f"{p['checkpoint']:38s} {p['step']:7d} {p['time_s']:8.1f} {100 * p['probe_top1']:6.1f}% {knn}",
                  flush=True)

    curve = probe_curve(args.checkpoint, resolve_builtin(args.train), resolve_builtin(args.test), knn=not args.no_knn,
                        seed=args.seed, device=device, on_point=show)
    where = write_curve(args.checkpoint, curve)
    if not args.json:
        print(f"curve: {where}")
    print(json.dumps(curve))
    return 0
