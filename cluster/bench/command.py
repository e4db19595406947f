"""`bigbatch bench data|losses|train|layout|step`: benchmarks that print a table and one JSON line of ratios."""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES = (
    "cluster.bench.data_command",
    "cluster.bench.losses_command",
    "cluster.bench.train_command",
    "cluster.bench.layout_command",
    "cluster.bench.step_command",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: data, losses, train, layout, step")
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    for name in BENCH_MODULES:
        importlib.import_module(name).register(sub)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
