"""`bigbatch submit CONFIG [key=value …] --address http://HEAD:8265`: the pretraining job through the Ray Jobs API.

The job's runtime_env ships bigbatch's four packages as ``py_modules`` from wherever they are installed (a
checkout or a wheel's site-packages); a CONFIG given as a file travels alone in a working_dir of its own. The
entrypoint is ``python -m cluster.cli pretrain …`` run on the head node, which then drives the workers.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_pipeline.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("submit", help="submit a pretraining job to a Ray cluster (Ray Jobs API)")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE")
    p.add_argument("--address", required=True, help="the cluster's dashboard/Jobs address, e.g. http://HEAD:8265")
    p.add_argument("--pip", action="append", default=[], help="extra pip requirement for the job's runtime env (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait for the job, print its logs, exit with its status")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait")
    p.add_argument("--allow-changes", action="store_true", help="passed to the job's `bigbatch pretrain`")
    p.add_argument("--connect-timeout", type=float, default=120.0,
                   help="seconds to keep retrying while the cluster is not yet ready to take jobs")
    p.set_defaults(func=run)


def entrypoint(items: list[str]) -> str:
    """The job's driver joins the cluster it runs on (`--address auto`: the RAY_ADDRESS the Jobs API sets)."""
    return " ".join(["python", "-m", "cluster.cli", "pretrain", *map(shlex.quote, items), "--address", "auto",
                     "--no-progress"])


# Messages of a cluster that is up but not yet serving jobs (the dashboard starts before its agents).
NOT_READY = ("No available agent", "Failed to connect", "Connection refused", "status code 502", "status code 503")


def submit_when_ready(make_client: Callable[[], Any], entry: str, runtime_env: dict,
                      timeout: float) -> tuple[Any, str]:
    """Submit, retrying with backoff while the cluster answers "not ready"; any other error is raised at once."""
    deadline, delay = time.time() + timeout, 1.0
    while True:
        try:
            client = make_client()
            return client, client.submit_job(entrypoint=entry, runtime_env=runtime_env)
        except (RuntimeError, ConnectionError) as exc:
            if not any(m in str(exc) for m in NOT_READY) or time.time() + delay > deadline:
                raise
            print(f"bigbatch submit: cluster not ready ({str(exc).splitlines()[0][:120]}); retrying in {delay:.0f} s",
                  file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def run(args: argparse.Namespace) -> int:
    from cluster.commands.pretrain import split_items
    from cluster.run_config import load_run_config

    config, overrides = split_items(args.items)
    load_run_config(config, overrides)  # validate locally: a bad key fails here, not on the cluster
    from cluster.ray_connect import code_runtime_env

    items = [config, *overrides] if config else list(overrides)
    if args.allow_changes:
        items.append("--allow-changes")

    runtime_env: dict = code_runtime_env()
    if args.pip:
        runtime_env["pip"] = args.pip
    with tempfile.TemporaryDirectory(prefix="bigbatch-submit-") as workdir:
        if config and Path(config).is_file():  # the user's file, as the job's working dir: CONFIG by its name
            items[0] = Path(config).name
            shutil.copyfile(config, Path(workdir) / items[0])
            runtime_env["working_dir"] = workdir
        from ray.job_submission import JobStatus, JobSubmissionClient

        try:
            client, job_id = submit_when_ready(lambda: JobSubmissionClient(args.address), entrypoint(items),
                                               runtime_env, args.connect_timeout)
        except (RuntimeError, ConnectionError) as exc:
            raise UserInputError(f"the Jobs API at {args.address} did not take the job within "
                                 f"{args.connect_timeout:.0f} s: {' '.join(str(exc).split())[:300]}") from exc
    print(f"submitted job {job_id} to {args.address}")
    print(f"  follow: ray job logs --address {args.address} --follow {job_id}")
    if not args.wait:
        return 0
    deadline = time.time() + args.timeout
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = client.get_job_status(job_id)
    while status not in terminal and time.time() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    print(client.get_job_logs(job_id))
    print(f"job {job_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1
