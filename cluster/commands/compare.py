"""`bigbatch compare RUN_DIR|URL …`: one table of several runs (local or at s3://…, gs://…)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="several runs side by side (method, loss, batch, steps, time, probe, kNN)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory or its URL (s3://bucket/runs/NAME)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--key", action="append", default=[], metavar="DOTTED",
                   help="also a config key's value per run (repeatable): --key optim.lr --key loss.temperature")
    p.add_argument("--plot", metavar="PNG", help="write probe and kNN top-1 against --x, a line per --by value")
    p.add_argument("--x", default="batch", help="the plot's x: a column (batch, steps, time_s) or a config key "
                   "(default batch)")
    p.add_argument("--plot-time", metavar="PNG", help="write each run's probe curve (`bigbatch probe RUN "
                   "--every-checkpoint`) against wall time, coloured by --by, marked by --x")
    p.add_argument("--by", default="loss", help="one line per value of this column or config key, or per combination "
                   "of several: --by loss,optim.name (default loss)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eval.compare import rows_of, table

    keys = tuple(dict.fromkeys([*args.key, *((args.x, *args.by.split(",")) if args.plot or args.plot_time else ())]))
    rows = rows_of(args.runs, keys)
    curves = None
    if args.plot_time:
        from eval.probe_curve import read_curve

        curves = [read_curve(r) for r in args.runs]  # a missing curve is an error before anything is drawn
    print(json.dumps(rows) if args.json else table(rows, args.key))
    if args.plot:
        from eval.compare_plot import plot_runs

        path = plot_runs(rows, args.x, args.by, Path(args.plot))
        if not args.json:
            print(f"plot: {path}")
    if curves is not None:
        from eval.compare_plot import plot_curves

        path = plot_curves(rows, curves, args.by, args.x, Path(args.plot_time))
        if not args.json:
            print(f"plot: {path}")
    return 0
