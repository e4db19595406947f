"""Shared fixtures: small real data (digits shards, a few hundred CIFAR-10 images) and one local Ray instance."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

import cluster  # noqa: F401  (sets RAY_TRAIN_V2_ENABLED, as for the CLI)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_ARCHIVE = Path(os.environ.get("BIGBATCH_CIFAR_ARCHIVE", SHARED_DATA / "cifar10-train.tar.gz"))

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


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

    from cluster.launch import connect_ray

    connect_ray(None, num_cpus=2)  # as an embedded run starts it
    yield ray
    ray.shutdown()


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
