"""A wheel of the project carries what the CLI needs at run time outside a source checkout: every preset and the
deployment manifests (an editable install reads them from the tree and would hide their absence)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cluster.run_config import PRESET_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_presets_and_deploy_manifests(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools in this venv")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("data_pipeline", "pretrain", "eval", "cluster"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("bigbatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = sorted(p.name for p in PRESET_DIR.glob("*.yaml"))
    assert "cifar10-cpu.yaml" in presets and "default.yaml" in presets
    assert {f"cluster/presets/{p}" for p in presets} <= names
    assert {"cluster/deploy/rayjob.yaml", "cluster/deploy/ray-cluster.yaml"} <= names
    assert not any(n.startswith("tests/") for n in names)
