"""`bigbatch compare RUN_DIR|URL …`: one table of several runs (local or at s3://…, gs://…)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="several runs side by side (method, loss, batch, steps, time, probe, kNN)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory or its URL (s3://bucket/runs/NAME)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eval.compare import run_row, table

    rows = [run_row(r) for r in args.runs]
    print(json.dumps(rows) if args.json else table(rows))
    return 0
