"""Probe accuracy against wall time: every retained checkpoint of a real (one-process) run probed after training,
its time placed from metrics.jsonl, the curve written into the run and drawn by `bigbatch compare --plot-time`."""

from __future__ import annotations

import json

import pytest

from cluster.cli import main
from eval.probe_curve import CURVE_FILE, step_clock


def test_step_clock_interpolates_and_keeps_the_last_time_of_a_resumed_step():
    lines = [{"time": 100.0, "event": "start"}, {"time": 110.0, "step": 1, "loss": 1.0},
             {"time": 140.0, "step": 4, "loss": 1.0},
             {"time": 150.0, "event": "start"}, {"time": 170.0, "step": 4, "loss": 1.0},  # resumed at step 3
             {"time": 190.0, "step": 6, "loss": 1.0}, {"time": 195.0, "event": "end"}]
    clock = step_clock(lines)
    assert clock(1) == pytest.approx(10.0)        # t0 is the first start event
    assert clock(2) == pytest.approx(30.0)        # between step 1 (110) and step 4's last time (170): 110 + 60/3
    assert clock(5) == pytest.approx(80.0)        # between 170 and 190
    assert clock(9) == pytest.approx(90.0)        # past the last logged step: its time
    with pytest.raises(ValueError, match="no start event"):
        step_clock([{"time": 1.0, "step": 1, "loss": 1.0}])


def test_every_checkpoint_probed_and_drawn_against_time(tmp_path, digits_shards, capsys):
    from cluster.run_config import load_run_config
    from cluster.run_dir import prepare_run_dir
    from eval.run_probe import probe_run
    from pretrain.checkpoint import checkpoint_step
    from pretrain.trainer import run_single_process

    cfg = load_run_config(None, ["model.encoder=bb_convnet_tiny", "data.image_size=16", "batch_size=64", "steps=4",
                                 "checkpoint_every=2", "log_every=1", "cluster.workers=1",
                                 f"data.train={digits_shards['train']}", f"cluster.storage_path={tmp_path}", "name=c"])
    run_dir = prepare_run_dir(cfg).local
    run_single_process(cfg, run_dir)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"time": 1.0, "step": 1, "loss": 6.0}) + "\n")  # no start
    assert main(["probe", str(run_dir), "--every-checkpoint", "--train", str(digits_shards["train"]), "--test",
                 str(digits_shards["holdout"])]) == 2
    assert f"{run_dir}/metrics.jsonl: cannot place checkpoints in time: metrics.jsonl has no start event" in \
        capsys.readouterr().err
    with open(run_dir / "metrics.jsonl", "w") as f:  # a driver's log: start at 100 s, steps 1 and 4 at 110 and 140 s
        for m in ({"time": 100.0, "event": "start"}, {"time": 110.0, "step": 1, "loss": 6.0},
                  {"time": 140.0, "step": 4, "loss": 5.0}):
            f.write(json.dumps(m) + "\n")
    (run_dir / "train_summary.json").write_text(json.dumps({"wall_time_s": 45.0, "final": {"step": 4}}))
    data = ["--train", str(digits_shards["train"]), "--test", str(digits_shards["holdout"])]

    assert main(["compare", str(run_dir), "--plot-time", str(tmp_path / "t.png")]) == 2  # no curve yet: said how
    assert f"{run_dir}: no {CURVE_FILE}; make it with `bigbatch probe" in capsys.readouterr().err

    train, test = str(digits_shards["train"]), str(digits_shards["holdout"])
    final = probe_run(run_dir, train, test, run_dir=run_dir)  # the run's own final probe: probe.json
    marked = json.loads((run_dir / "probe.json").read_text())
    marked["method"]["top1"] = 0.123  # a mark: the final checkpoint's point must come from probe.json, not a new probe
    (run_dir / "probe.json").write_text(json.dumps(marked))

    assert main(["probe", str(run_dir), "--every-checkpoint", *data]) == 0
    out = capsys.readouterr().out
    curve = json.loads(out.strip().splitlines()[-1])
    points = curve["points"]
    assert [p["step"] for p in points] == [2, 4] and [p["time_s"] for p in points] == [20.0, 40.0]
    assert [checkpoint_step(run_dir / p["checkpoint"]) for p in points] == [2, 4]
    assert points[0]["probe_top1"] == probe_run(run_dir / points[0]["checkpoint"], train, test)["method"]["top1"]
    assert 0.1 < points[0]["probe_top1"] <= 1 and points[0]["knn_top1"] is not None
    assert final["checkpoint"].endswith(points[1]["checkpoint"]) and points[1]["probe_top1"] == 0.123
    assert main(["probe", str(run_dir), "--every-checkpoint", "--seed", "1", "--json", *data]) == 0
    reprobed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["points"]
    assert 0.1 < reprobed[1]["probe_top1"] != 0.123  # another seed: probe.json does not answer for it
    assert main(["probe", str(run_dir), "--every-checkpoint", *data]) == 0
    curve = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((run_dir / CURVE_FILE).read_text()) == curve
    assert f"curve: {run_dir}/{CURVE_FILE}" in out and "checkpoints/checkpoint_" in out and "12.3%" in out

    png = tmp_path / "time.png"
    assert main(["compare", str(run_dir), str(run_dir), "--plot-time", str(png), "--json"]) == 0
    import matplotlib.image
    assert matplotlib.image.imread(png).shape[1] == int(9 * 110)

    assert main(["probe", str(run_dir), "--every-checkpoint", "--baseline", "pixels", *data]) == 2
    assert "--every-checkpoint probes a run directory's checkpoints" in capsys.readouterr().err
