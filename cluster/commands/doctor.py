"""`bigbatch doctor [--address ADDR] [--check NAME …] [--json]`: the self-test to run before a first GPU run."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="self-test: environment, each loss's DDP contract, SyncBN, mixed precision, resume, input rate",
        description="Reports torch/CUDA/NCCL versions, GPUs and their bf16 support, CPU cores per GPU and Ray's "
                    "resources, then runs short checks with the node's real backends (NCCL with >= 2 GPUs, else "
                    "gloo). One line per check; exit 1 if any fails; the last line is JSON.")
    p.add_argument("--address", default=None, help="a Ray cluster (host:port, ray://…, or auto): report its resources "
                   "and run the checks on its node with the most GPUs; default: this machine, embedded Ray")
    p.add_argument("--check", action="append", default=None, metavar="NAME",
                   help="run only this check (repeatable): ray, ddp, syncbn, precision, checkpoint, stream")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cluster.doctor import CHECKS, run_doctor

    unknown = [c for c in args.check or () if c not in CHECKS]
    if unknown:
        print(f"bigbatch doctor: unknown check {unknown[0]!r} (choose from {', '.join(CHECKS)})", file=sys.stderr)
        return 2
    report = run_doctor(args.address, args.check)
    if not args.json:
        for line in summary_lines(report):
            print(line, flush=True)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def summary_lines(report: dict) -> list[str]:
    env, ray = report["environment"], report["ray"]
    lines = [f"torch {env['torch']} (CUDA {env['cuda'] or '-'}, cuDNN {env['cudnn'] or '-'}, NCCL {env['nccl'] or '-'}); "
             f"{len(env['gpus'])} GPU(s), {env['cpu_cores']} CPU cores"
             + (f", {env['cores_per_gpu']:g} per GPU" if env["gpus"] else "")]
    for g in env["gpus"]:
        lines.append(f"  gpu {g['index']}: {g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}, "
                     + ("bf16 native" if g["bf16"] else "no native bf16: use precision=fp16"))
    for n in (ray or {}).get("nodes", ()):
        lines.append(f"  ray node {n['node']}: {n['cpus']:g} CPUs, {n['gpus']:g} GPUs")
    width = max(len(c["name"]) for c in report["checks"]) if report["checks"] else 0
    for c in report["checks"]:
        lines.append(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']:<{width}}  {c['detail']}")
    failed = sum(not c["ok"] for c in report["checks"])
    lines.append(f"{failed} of {len(report['checks'])} checks FAILED" if failed else
                 f"all {len(report['checks'])} checks ok")
    return lines
