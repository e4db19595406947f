"""`bigbatch sweep [CONFIG] key=a,b,c … [--samples N] [--budget-minutes M] [--name N]`: a grid or random search of
ordinary runs as Ray Tune trials, with a results table and a plot."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
values (each parsed as YAML, like `bigbatch pretrain` overrides):
  key=v                    fixed for every trial
  key=a,b,c                an axis: the grid runs every combination of the axes; with --samples N,
                           each trial draws one of the values
  key=loguniform(lo,hi)    a range for random search (--samples): also uniform(lo,hi), randint(lo,hi) (hi excluded)
  commas inside [] {} () or quotes do not split: eval.baselines=[pixels],[pixels,pca]

examples:
  bigbatch sweep cifar10-cpu optim.lr=0.3,0.6,1.2 loss.temperature=0.1,0.2 --budget-minutes 10
  bigbatch sweep ranking optim.lr='loguniform(0.05,2)' model.proj_dim=64,128 --samples 8 --name lr-search

Each trial is an ordinary run directory STORAGE/NAME/trialNN-key_value-… (`bigbatch compare` reads them); the sweep
directory also holds results.md/.csv/.json and METRIC.png. Trials run one at a time on this machine and in
parallel on a cluster (as many as its resources hold). Ctrl-C stops the sweep; rerunning the same command (or
--name) resumes it: finished trials are kept, the others resume from their last checkpoint. Without --name, the
name is derived from the arguments. --budget-minutes stops each run at the first step after M minutes of training
(start-up excluded) and then probes it; the lr schedule keeps the steps/epochs length, so the budget truncates it.
Exit code: 0 all trials done, 1 some failed (the table says why), 2 a usage or config error, 130 interrupted.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from cluster.sweep_report import METRICS

    p = subparsers.add_parser("sweep", help="grid / random search of runs as Ray Tune trials, with a results table",
                              description="Sweep dotted config keys over runs of CONFIG (a YAML file or a preset name; "
                                          "default: the built-in default).",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUES")
    p.add_argument("--samples", type=int, default=None, metavar="N", help="random search: N trials (default: the grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search's draws (default 0)")
    p.add_argument("--budget-minutes", type=float, default=None, metavar="M",
                   help="wall-clock training budget per trial (sets budget_minutes)")
    p.add_argument("--name", default=None, help="sweep name ([A-Za-z0-9._-]); rerun with it to resume")
    p.add_argument("--metric", default="probe_top1", choices=sorted(METRICS),
                   help="the metric of the table's best row and of the plot (default probe_top1)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (host:port, ray://…, or 'auto'); "
                   "default: a new embedded local Ray")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cluster.run_config import ConfigError
    from cluster.sweep_space import parse_items

    if args.samples is not None and args.samples < 1:
        print(f"bigbatch sweep: --samples {args.samples}: must be at least 1", file=sys.stderr)
        return 2
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        print(f"bigbatch sweep: --budget-minutes {args.budget_minutes}: must be positive", file=sys.stderr)
        return 2
    from cluster.sweep import run_sweep

    try:
        spec = parse_items(args.items)
        outcome = run_sweep(spec, name=args.name, samples=args.samples, seed=args.seed,
                            budget_minutes=args.budget_minutes, address=args.address, metric=args.metric)
    except ConfigError as exc:
        print(f"bigbatch sweep: {exc}", file=sys.stderr)
        return 2
    print(outcome.files["md"].read_text())
    print(f"sweep directory: {outcome.sweep_dir}")
    print("results: " + ", ".join(str(p) for p in outcome.files.values()))
    if outcome.interrupted:
        print(f"bigbatch sweep: {outcome.name} interrupted; rerun the same command (or --name {outcome.name}) "
              "to resume it", file=sys.stderr)
        return 130
    if outcome.failed:
        print(f"bigbatch sweep: {len(outcome.failed)} of {len(outcome.rows)} trials failed (see the error column)",
              file=sys.stderr)
        return 1
    return 0
