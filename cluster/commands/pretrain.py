"""`bigbatch pretrain [CONFIG] [key=value …] [--address ADDR]`: the main job."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain an encoder (default: SimCLR on the built-in digits, 2 local Ray workers)",
        description="Pretrain with Ray Train. CONFIG is a YAML file or a preset name (cluster/presets/); "
                    "overrides are KEY=VALUE with dotted keys, e.g. loss.name=spectral batch_size=512.")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE")
    p.add_argument("--address", default=None, help="an existing Ray cluster (host:port or ray://…; 'auto': the one this process runs in, "
                   "e.g. inside a Ray job); default: a new embedded local Ray")
    p.add_argument("--name", default=None, help="run name (rerun with the same name to resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    config = None
    overrides = []
    for i, item in enumerate(items):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            config = item
        else:
            raise SystemExit(f"bigbatch pretrain: {item!r} is neither the first argument (CONFIG) nor KEY=VALUE")
    return config, overrides


def run(args: argparse.Namespace) -> int:
    from cluster.run_config import ConfigError, dump_yaml, load_run_config

    config, overrides = split_items(args.items)
    if args.address:
        overrides.append(f"cluster.address={args.address}")
    if args.name:
        overrides.append(f"name={args.name}")
    try:
        cfg = load_run_config(config, overrides)
    except ConfigError as exc:
        print(f"bigbatch pretrain: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from cluster.launch import run_pretrain
    from pretrain.run_store import is_url

    try:
        run_dir = run_pretrain(cfg, show_progress=not args.no_progress)
    except ConfigError as exc:
        print(f"bigbatch pretrain: {exc}", file=sys.stderr)
        return 2
    print(f"run directory: {run_dir}")
    if cfg.cluster.storage_path and is_url(cfg.cluster.storage_path):
        print(f"stored at: {cfg.cluster.storage_path.rstrip('/')}/{run_dir.name}")
    report = run_dir / "report.md"
    if report.exists():
        print(f"report: {report}")
    return 0
