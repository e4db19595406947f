"""The `bigbatch` command: one entry point, subcommands registered by the modules in cluster.commands.

Each command module exposes ``register(subparsers)`` that adds its parser(s) and sets
``func=<callable(args) -> int>``. Heavy imports (torch, ray) happen inside those callables so that
``bigbatch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order = order in `bigbatch --help`.
COMMAND_MODULES = (
    "cluster.commands.pretrain",
    "cluster.commands.submit",
    "cluster.commands.shards",
    "cluster.commands.probe",
    "cluster.commands.export",
    "cluster.commands.compare",
    "cluster.commands.bench",
    "cluster.commands.sweep",
    "cluster.commands.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigbatch",
        description="Large-batch self-supervised pretraining of image encoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
