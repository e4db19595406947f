"""A rerun of a run name (a resume) with a config whose model, loss, optimiser or data changed is refused with the
changed keys unless --allow-changes; config.yaml is never overwritten, changes go to config-resume-N.yaml."""

from __future__ import annotations

import pytest
import yaml

from cluster.run_config import ConfigError, load_run_config
from cluster.run_dir import prepare_run_dir


def _cfg(tmp_path, *extra: str):
    return load_run_config(None, [f"cluster.storage_path={tmp_path}", "name=r", *extra])


def test_first_run_writes_config_and_identical_rerun_writes_nothing(tmp_path):
    run_dir = prepare_run_dir(_cfg(tmp_path)).local
    original = (run_dir / "config.yaml").read_text()
    assert load_run_config(str(run_dir / "config.yaml")) == _cfg(tmp_path)
    prepare_run_dir(_cfg(tmp_path))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    assert (run_dir / "config.yaml").read_text() == original


@pytest.mark.parametrize(("change", "keys"), [
    (["data.train=/other/shards"], ["data.train: 'digits' → '/other/shards'"]),
    (["data.image_size=32"], ["data.image_size: 16 → 32"]),
    (["optim.lr=0.5", "optim.momentum=0.8"], ["optim.lr: None → 0.5", "optim.momentum: 0.9 → 0.8"]),
    (["model.proj_dim=16"], ["model.proj_dim: 128 → 16"]),
    (["data.local_views=4"], ["data.local_views: 0 → 4"]),
    (["loss.name=spectral"], ["loss.name: 'ranking' → 'spectral'", "loss.mu: None → 1.0", "loss.temperature: 0.2 → None"]),
])
def test_changed_keys_are_refused_by_name(tmp_path, change, keys):
    run_dir = prepare_run_dir(_cfg(tmp_path)).local
    original = (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError) as exc:
        prepare_run_dir(_cfg(tmp_path, *change))
    for k in keys:
        assert k in str(exc.value)
    assert "--allow-changes" in str(exc.value) and (run_dir / "config.yaml").read_text() == original
    assert not list(run_dir.glob("config-resume-*"))


def test_allowed_changes_are_recorded_beside_the_original(tmp_path, capsys):
    run_dir = prepare_run_dir(_cfg(tmp_path)).local
    original = (run_dir / "config.yaml").read_text()
    prepare_run_dir(_cfg(tmp_path, "optim.lr=0.5"), allow_changes=True)
    prepare_run_dir(_cfg(tmp_path, "steps=400"))  # the length of a run is not checked, but recorded as well
    assert (run_dir / "config.yaml").read_text() == original
    first = yaml.safe_load((run_dir / "config-resume-1.yaml").read_text())
    second = yaml.safe_load((run_dir / "config-resume-2.yaml").read_text())
    assert (first["optim"]["lr"], first["steps"], second["steps"], second["optim"]["lr"]) == (0.5, 150, 400, None)
    err = capsys.readouterr().err
    assert "optim.lr: None → 0.5" in err and "config-resume-1.yaml" in err and "config-resume-2.yaml" in err


def test_unreadable_config_yaml_is_named(tmp_path):
    run_dir = prepare_run_dir(_cfg(tmp_path)).local
    (run_dir / "config.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match=r"r/config.yaml: not a readable bigbatch config"):
        prepare_run_dir(_cfg(tmp_path))
