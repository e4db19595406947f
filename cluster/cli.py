"""The `bigbatch` command: one entry point, subcommands registered by the modules in cluster.commands (and, for
`bigbatch bench`, cluster.bench.command).

Each command module exposes ``register(subparsers)`` that adds its parser(s) and sets
``func=<callable(args) -> int>``. Heavy imports (torch, ray) happen inside those callables so that
``bigbatch --help`` stays fast. Errors: a user mistake (cluster/errors.py) is one line
``bigbatch COMMAND: MESSAGE`` and exit code 2 (the traceback too with ``--debug`` or ``BIGBATCH_DEBUG=1``);
any other exception is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from cluster import __version__
from cluster.errors import user_message

# Order = order in `bigbatch --help`.
COMMAND_MODULES = (
    "cluster.commands.pretrain",
    "cluster.commands.submit",
    "cluster.commands.shards",
    "cluster.commands.probe",
    "cluster.commands.export",
    "cluster.commands.compare",
    "cluster.bench.command",
    "cluster.commands.sweep",
    "cluster.commands.doctor",
)


def _name_leaves(parser: argparse.ArgumentParser) -> None:
    """Every parser's default ``command`` becomes its full name ('bigbatch shards write'), for error messages."""
    parser.set_defaults(command_name=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _name_leaves(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigbatch",
        description="Large-batch self-supervised pretraining of image encoders.",
    )
    parser.add_argument("--version", action="version", version=f"bigbatch {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a failed command (also: BIGBATCH_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _name_leaves(parser)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse; KEY=VALUE items may stand on either side of options (``pretrain steps=20 --name x batch_size=8``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        items = getattr(args, "items", None)
        if not isinstance(items, list) or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        items.extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BIGBATCH_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted before or after the subcommand
    parser = build_parser()
    args = parse(parser, argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise  # a bug: the full traceback, exit code 1
        if debug:
            traceback.print_exc()
        print(f"{args.command_name}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
