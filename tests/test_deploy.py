"""The deployment manifests parse, name presets that ship with the package, and carry bigbatch commands that the CLI accepts and
that fit the resources they ask for."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import ray
import yaml

from cluster.cli import main
from cluster.run_config import PRESET_DIR, find_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "cluster" / "deploy"


def _resolved(argv: list[str]) -> dict:
    """The run config a `bigbatch pretrain …` command line resolves to (through the real CLI, --print-config)."""
    assert argv[:2] == ["bigbatch", "pretrain"], argv
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv[1:], "--print-config"]) == 0
    return yaml.safe_load(out.getvalue())


def test_rayjob_entrypoint_is_a_valid_job_for_its_cluster():
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert find_config(argv[2]).parent == PRESET_DIR, f"{argv[2]} is not a preset shipped with the package"
    cfg = _resolved(argv)
    assert cfg["cluster"]["address"] == "auto"  # the driver joins the RayJob's cluster, never starts its own
    assert cfg["data"]["train"].startswith("s3://") and cfg["cluster"]["storage_path"].startswith("s3://")

    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__
    groups = spec["workerGroupSpecs"]
    assert cfg["cluster"]["workers"] == sum(g["replicas"] for g in groups)
    head_image = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for g in groups:
        container = g["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        assert container["image"] == head_image and container["workingDir"] == "/app"
        assert cfg["cluster"]["gpus_per_worker"] <= float(limits.get("nvidia.com/gpu", 0))
        assert cfg["cluster"]["cpus_per_worker"] <= float(limits["cpu"])


def test_ray_up_cluster_config_and_its_submit_command():
    text = (DEPLOY / "ray-cluster.yaml").read_text()
    cluster = yaml.safe_load(text)
    assert cluster["head_node_type"] in cluster["available_node_types"]
    (mount, source), = cluster["file_mounts"].items()
    assert (ROOT / source).resolve() == ROOT  # `ray up` from the repository root mounts the project
    assert any(mount in cmd and "pip install" in cmd for cmd in cluster["setup_commands"])
    assert any("--head" in c for c in cluster["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP" in c for c in cluster["worker_start_ray_commands"])
    assert sum(t.get("max_workers", 0) for t in cluster["available_node_types"].values()) >= 1

    # The submit command in the header comment, joined across its continuation lines.
    comment = " ".join(line.lstrip("# ").rstrip("\\ ") for line in text.splitlines() if line.startswith("#"))
    submit = re.search(r"bigbatch submit (.*?--address \S+)", comment)
    assert submit, "no `bigbatch submit` command in the header"
    argv = shlex.split(submit.group(1))
    address = argv[argv.index("--address") + 1]
    items = argv[: argv.index("--address")]
    assert address.startswith("http") and find_config(items[0]).parent == PRESET_DIR
    cfg = _resolved(["bigbatch", "pretrain", *items])
    assert cfg["cluster"]["gpus_per_worker"] >= 1
    assert cfg["cluster"]["workers"] <= cluster["available_node_types"]["gpu_worker"]["max_workers"]


IMAGE = re.compile(r"\brayproject/(?P<family>[\w-]+):(?P<version>\d+\.\d+\.\d+)-(?P<tags>[\w.-]+)")


def test_both_manifests_use_the_published_ray_image_of_the_installed_version():
    """`ray up` and the RayJob's Dockerfile line start from the same image family, rayproject/ray, at the installed Ray
    version with a GPU tag: ray-ml images were published up to 2.49 only, so `ray-ml:2.60.0-…` cannot be pulled."""
    up = IMAGE.fullmatch(yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())["docker"]["image"])
    job = IMAGE.search((DEPLOY / "rayjob.yaml").read_text().split("FROM ", 1)[1])
    for m in (up, job):
        assert m, "no rayproject/… image"
        assert m["family"] == "ray" and m["version"] == ray.__version__, m.group(0)
        assert re.fullmatch(r"(py3\d+-)?(gpu|cu\d+)", m["tags"]), f"{m.group(0)}: not a GPU image"
    assert up.group(0) == job.group(0)
