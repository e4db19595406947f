"""Shared fixtures: small real data (digits shards and image folder every clone has; a few hundred CIFAR-10
images where the archive is present) and one local Ray instance."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_ARCHIVE = Path(os.environ.get("BIGBATCH_CIFAR_ARCHIVE", SHARED_DATA / "cifar10-train.tar.gz"))

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


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


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray instance (2 CPUs) shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
