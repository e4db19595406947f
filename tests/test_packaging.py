"""A wheel of the project carries what the CLI needs at run time outside a source checkout: every preset and the
deployment manifests (an editable install reads them from the tree and would hide their absence)."""

from __future__ import annotations

import zipfile

from conftest import build_wheel

from cluster.run_config import PRESET_DIR


def test_wheel_ships_presets_and_deploy_manifests(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = sorted(p.name for p in PRESET_DIR.glob("*.yaml"))
    assert "cifar10-cpu.yaml" in presets and "default.yaml" in presets
    assert {f"cluster/presets/{p}" for p in presets} <= names
    assert {"cluster/deploy/rayjob.yaml", "cluster/deploy/ray-cluster.yaml"} <= names
    assert not any(n.startswith("tests/") for n in names)
