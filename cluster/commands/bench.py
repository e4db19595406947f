"""`bigbatch bench data|losses|train|layout|step`: benchmarks that print a table and one JSON line of ratios."""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES = (
    "cluster.commands.bench_data",
    "cluster.commands.bench_losses",
    "cluster.commands.bench_train",
    "cluster.commands.bench_layout",
    "cluster.commands.bench_step",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: data, losses, train, layout, step")
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
