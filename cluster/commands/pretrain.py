"""`bigbatch pretrain [CONFIG] [key=value …] [--address ADDR]`: the main job."""

from __future__ import annotations

import argparse
import json

from data_pipeline.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain an encoder (default: SimCLR on the built-in digits, 2 local Ray workers)",
        description="Pretrain with Ray Train. CONFIG is a YAML file or a preset name (cluster/presets/); "
                    "overrides are KEY=VALUE with dotted keys, e.g. loss.name=spectral batch_size=512.")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE")
    p.add_argument("--address", default=None, help="an existing Ray cluster (host:port or ray://…; 'auto': the one this process runs in, "
                   "e.g. inside a Ray job); default: a new embedded local Ray")
    p.add_argument("--name", default=None, help="run name: letters, digits, . _ - (rerun with the same name to resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--allow-changes", action="store_true",
                   help="resume a run whose data.train, data.image_size, optim, model, loss, … differ from its "
                        "config.yaml (the original is kept; the new config goes to config-resume-N.yaml)")
    p.set_defaults(func=run)


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """(CONFIG or None, KEY=VALUE overrides): the one item without '=' is the config, wherever it stands."""
    configs = [item for item in items if "=" not in item]
    if len(configs) > 1:
        raise UserInputError(f"{configs[1]!r}: only one CONFIG (preset or YAML file) is allowed, {configs[0]!r} is "
                             "already given; overrides are KEY=VALUE")
    return (configs[0] if configs else None), [item for item in items if "=" in item]


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """Options that are config keys, as overrides; values quoted so YAML reads them as strings ('--name 2024')."""
    pairs = [("cluster.address", args.address), ("name", args.name)]
    return [f"{key}={json.dumps(value)}" for key, value in pairs if value is not None]


def run(args: argparse.Namespace) -> int:
    from cluster.run_config import dump_yaml, load_run_config

    config, overrides = split_items(args.items)
    cfg = load_run_config(config, overrides + cli_overrides(args), check_data=not args.print_config)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from cluster.launch import run_pretrain
    from pretrain.run_store import is_url

    run_dir = run_pretrain(cfg, show_progress=not args.no_progress, allow_changes=args.allow_changes)
    print(f"run directory: {run_dir}")
    if cfg.cluster.storage_path and is_url(cfg.cluster.storage_path):
        print(f"stored at: {cfg.cluster.storage_path.rstrip('/')}/{run_dir.name}")
    report = run_dir / "report.md"
    if report.exists():
        print(f"report: {report}")
    return 0
