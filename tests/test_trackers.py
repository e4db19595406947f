"""Trackers that cannot be reached (an MLflow server nobody runs, W&B online without a login): one warning line
each, the others go on. A real run logged to MLflow and W&B, and its resume, is in test_remote_run.py."""

from __future__ import annotations

from conftest import free_port
from tracker_utils import offline_env

from cluster.run_config import load_run_config


def test_unreachable_trackers_warn_once_and_the_run_goes_on(tmp_path, monkeypatch, capfd):
    from cluster.trackers import Trackers

    for k, v in {**offline_env(tmp_path), "WANDB_MODE": "online", "HOME": str(tmp_path)}.items():
        monkeypatch.setenv(k, v)  # W&B online without a login (no key, no ~/.netrc)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = load_run_config(None, ["name=offline", "tracking.backends=[tensorboard,mlflow,wandb]",
                                 f"tracking.mlflow_uri=http://127.0.0.1:{free_port()}"])
    trackers = Trackers(cfg, run_dir)
    assert list(trackers.active) == ["tensorboard"]
    trackers.log_metrics({"train/loss": 1.0}, 1)
    trackers.log_artifact(run_dir / "missing.png")
    trackers.close()
    lines = [x for x in capfd.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("bigbatch: warning: mlflow tracking is off for this run") and "127.0.0.1" in lines[0]
    assert lines[1].startswith("bigbatch: warning: wandb tracking is off for this run")
    assert list((run_dir / "tb").iterdir())


def test_tracker_failing_mid_run_is_switched_off_with_one_warning(tmp_path, monkeypatch, capfd):
    import shutil

    from cluster.trackers import Trackers

    for k, v in offline_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store = tmp_path / "mlruns"
    cfg = load_run_config(None, ["name=flaky", "tracking.backends=[mlflow,tensorboard]", f"tracking.mlflow_uri=file://{store}"])
    trackers = Trackers(cfg, run_dir)
    assert list(trackers.active) == ["mlflow", "tensorboard"]
    trackers.log_metrics({"train/loss": 2.0}, 1)
    shutil.rmtree(store)
    store.write_text("not a directory")  # the store breaks while the run goes on
    for step in (2, 3):
        trackers.log_metrics({"train/loss": 1.0}, step)
    trackers.close()
    lines = [x for x in capfd.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("bigbatch: warning: mlflow tracking is off for this run"), lines
    assert list(trackers.active) == []
