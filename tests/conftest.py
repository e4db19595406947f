"""Shared fixtures: small real data (digits shards and image folder every clone has; a few hundred CIFAR-10
images where the archive is present), one local Ray instance, a two-node loopback Ray cluster on an interpreter
without bigbatch, and the project's wheel."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import cluster  # noqa: F401  (sets RAY_TRAIN_V2_ENABLED, as for the CLI)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_ARCHIVE = Path(os.environ.get("BIGBATCH_CIFAR_ARCHIVE", SHARED_DATA / "cifar10-train.tar.gz"))

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Ray Train's controller polls its workers every 2 s, so a run's end (or a killed worker) is seen up to 2 s late; the
# suite's ~40 tiny runs poll every 0.2 s (inherited by every Ray process the tests start, subprocesses included).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


# The longest files, by the suite's --durations table (each 2-7 min under -n 2): started first, so that neither
# xdist worker is left with one of them at the end while the other idles.
LONGEST_FILES = ("test_sweep.py", "test_ray_cluster.py", "test_ray_pretrain.py", "test_elastic_ray.py",
                 "test_remote_run.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first, then the other files holding slow (end-to-end) tests, then the rest; each file's
    tests keep their order. Under ``-n 2 --dist loadfile`` the long files start early."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        return (0, LONGEST_FILES.index(name)) if name in LONGEST_FILES else (1 if item.path in slow_files else 2, 0)

    items.sort(key=rank)  # stable: file order and test order are kept within a rank


def unpack_cifar(dest: Path, per_class: int) -> Path:
    """Unpack the first ``per_class`` images of every class of the CIFAR-10 archive into ``dest/CLASS/``."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    counts: dict[str, int] = {}
    with tarfile.open(CIFAR_ARCHIVE, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            cls = Path(member.name).parent.name
            if counts.get(cls, 0) >= per_class:
                if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                    break
                continue
            counts[cls] = counts.get(cls, 0) + 1
            out = dest / cls / Path(member.name).name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    return dest


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 CIFAR-10 training images (30 per class) as an image folder in a temp dir."""
    return unpack_cifar(tmp_path_factory.mktemp("cifar") / "train", per_class=30)


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits written as shards with a 20% class-stratified holdout: {'train': dir, 'holdout': dir}."""
    from data_pipeline.writer import write_shards

    out = tmp_path_factory.mktemp("digits_shards")
    write_shards("digits", out / "train", shard_size=256, holdout=0.2, holdout_dir=out / "holdout", seed=0)
    return {"train": out / "train", "holdout": out / "holdout"}


def write_digits_folder(dest: Path, per_class: int = 30) -> Path:
    """The first ``per_class`` scikit-learn digits of every class as an image folder ``dest/CLASS/NAME.png``."""
    from data_pipeline.sources import digits

    src = digits()
    counts: dict[int, int] = {}
    for i, label in enumerate(src.labels):
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        data, ext = src.read(i)
        out = dest / src.classes[label] / f"{src.names[i]}.{ext}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return dest


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 digits (30 per class) as an image folder of PNGs in a temp dir."""
    return write_digits_folder(tmp_path_factory.mktemp("digits_folder") / "train")


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory: pytest.TempPathFactory, digits_folder: Path) -> Path:
    """``digits_folder`` as shards of 64: five shards of 64, 64, 64, 64 and 44 samples with manifest.json."""
    from data_pipeline.writer import write_shards

    out = tmp_path_factory.mktemp("small_shards") / "train"
    write_shards(str(digits_folder), out, shard_size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def cifar_shards(tmp_path_factory: pytest.TempPathFactory, cifar_dir: Path) -> Path:
    from data_pipeline.writer import write_shards

    out = tmp_path_factory.mktemp("cifar_shards") / "train"
    write_shards(str(cifar_dir), out, shard_size=64, seed=0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A loopback S3 server (moto's server mode on 127.0.0.1): its endpoint URL."""
    try:
        import boto3  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"moto server mode unavailable: {exc}")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"moto server did not start: {exc}")
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment that points boto3, s3fs and pyarrow (Ray's storage) at the loopback S3 server."""
    return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint}


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray instance shared by every test that needs Ray: 3 logical CPUs, room for the two
    workers of a test run and the probe task beside them."""
    import ray

    from cluster.ray_connect import connect_ray

    connect_ray(None, num_cpus=3)  # as an embedded run starts it
    yield ray
    ray.shutdown()


# -- a Python that has bigbatch's dependencies but not bigbatch, and a two-node Ray cluster running on it ----------
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_pipeline", "pretrain", "eval", "cluster")


def venv_with_test_deps(path: Path) -> Path:
    """A new venv (no pip) that sees this test interpreter's site-packages through a .pth path entry. The .pth files
    in there (an editable install's finder) are not run for such an entry: bigbatch is not importable from it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    site, = path.glob("lib/python*/site-packages")
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "test-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return path / "bin" / "python"


# The environment of test clusters and their clients, fixed at import. Servers stay on loopback, so token auth is off
# explicitly: an in-process ray.init (ray_local) sets RAY_AUTH_MODE=token in os.environ, and a cluster started after
# that would refuse clients whose environment was copied before.
LOOPBACK_ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def env_without_bigbatch(python: Path) -> dict[str, str]:
    """The environment for processes of ``python``: its bin first on PATH (a Ray job's `python`), no PYTHONPATH."""
    env = {k: v for k, v in LOOPBACK_ENV.items() if k != "PYTHONPATH"}
    return {**env, "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}"}


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = venv_with_test_deps(tmp_path_factory.mktemp("bare") / "venv")
    check = subprocess.run([str(python), "-c", "import pretrain"], capture_output=True, text=True,
                           env=env_without_bigbatch(python), cwd=python.parent, timeout=300)
    assert "No module named 'pretrain'" in check.stderr, check.stderr[-2000:]
    return python


CLUSTER_SCRIPT = r"""
import json, sys
from ray.cluster_utils import Cluster
port, agent_port = int(sys.argv[1]), int(sys.argv[2])
# The head's job agent gets a free port: its default (52365) may be held by another Ray on this machine (the
# test session's embedded instance), and a head without an agent answers every job "No available agent".
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
            "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
            "dashboard_agent_listen_port": agent_port})
c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
c.wait_for_nodes()
print(json.dumps({"address": c.address, "dashboard": f"http://127.0.0.1:{port}"}), flush=True)
sys.stdin.read()          # the test closes stdin when it is done
c.shutdown()
"""


@pytest.fixture(scope="module")
def two_node_cluster(bare_python: Path):
    """Two Ray nodes on 127.0.0.1 (one CPU each) run by an interpreter without bigbatch: jobs and drivers must ship
    the code (py_modules). Yields {"address": GCS address, "dashboard": Jobs API URL}."""
    proc = subprocess.Popen([str(bare_python), "-c", CLUSTER_SCRIPT, str(free_port()), str(free_port())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env_without_bigbatch(bare_python), cwd=bare_python.parent)
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by PID


def build_wheel(dest: Path) -> Path:
    """The project's wheel, built without isolation from a copy of the sources (no tests, no .venv)."""
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools in this venv")
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dest / "dist"), str(src)], check=True, timeout=300)
    wheel, = (dest / "dist").glob("bigbatch-*.whl")
    return wheel


def zero_images(shard: Path, count: int | None = None) -> list[str]:
    """Overwrite the first ``count`` images (all: None) of a shard with zeros in place: undecodable samples in a
    shard of unchanged size and members. Returns their keys."""
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".png")][:count]
    with open(shard, "r+b") as f:
        for m in members:
            f.seek(m.offset_data)
            f.write(b"\0" * m.size)
    return [m.name.rsplit(".", 1)[0] for m in members]


@pytest.fixture(scope="session")
def small_bad_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A fifth of the digits (≈ 360 samples, a few steps per epoch) in shards of 64 whose second shard's first two
    images do not decode: {'train': dir, 'bad': [keys], 'shard': its file name, 'positions': [0, 1]}."""
    from data_pipeline.writer import write_shards

    out = tmp_path_factory.mktemp("small_bad_shards")
    write_shards("digits", out / "train", shard_size=64, holdout=0.8, holdout_dir=out / "rest", seed=0)
    shard = sorted((out / "train").glob("*.tar"))[1]
    bad = zero_images(shard, 2)
    return {"train": out / "train", "bad": bad, "shard": shard.name, "positions": [0, 1]}


def planned_reads(plan, manifest, shard: str, positions: list[int]) -> int:
    """How often an epoch plan reads the given samples of a shard (a sample in a repeat lap is read again)."""
    index = next(i for i, s in enumerate(manifest.shards) if s.name == shard)
    return sum(s.start <= p < s.stop for r in plan.ranks for w in r.workers for s in w.segments if s.shard == index
               for p in positions)
