"""`bigbatch compare RUN_DIR|URL …`: one table of several runs (local or at s3://…, gs://…)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="several runs side by side (method, loss, batch, steps, time, probe, kNN)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory or its URL (s3://bucket/runs/NAME)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eval.compare import run_row, table

    try:
        rows = [run_row(r) for r in args.runs]
    except (ValueError, OSError, ImportError) as exc:  # ImportError: no s3fs/gcsfs for the URL
        print(f"bigbatch compare: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows) if args.json else table(rows))
    return 0
