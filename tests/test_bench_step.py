"""`bigbatch bench step`: the share/crossover arithmetic against exact power laws, and one tiny real run (structure,
and the quadratic loss's share rising with B — a 256× difference in work, so noise cannot reverse it)."""

from __future__ import annotations

import json

import pytest

from cluster.bench.loss_scaling import Config, Result
from cluster.bench.step_share import EncoderCost, LossModel, crossover, report, share, table
from cluster.cli import main


def _model(loss: str, batches, seconds) -> LossModel:
    return LossModel.from_results(loss, [Result(Config(loss, b), time_s=seconds(b)) for b in batches])


ENC = EncoderCost("net@32", 32, seconds_per_pair=1e-4, pairs=8)


def test_quadratic_loss_crosses_where_the_power_law_says():
    quad = _model("ranking", (256, 512, 1024), lambda b: 1e-8 * b * b)  # L = e·B at B* = 1e-4 / 1e-8 = 10^4
    assert quad.slope == pytest.approx(2.0)
    assert quad.seconds(1 << 20) == (pytest.approx(1e-8 * 2.0 ** 40), True) and quad.seconds(512)[1] is False
    x = crossover(quad, ENC)
    assert x["projected"] and x["batch"] == pytest.approx(10_000, rel=1e-6)
    assert share(quad.seconds(10_000)[0], ENC, 10_000) == pytest.approx(0.5)
    inside = _model("ranking", (4096, 8192, 16384), lambda b: 1e-8 * b * b)  # measured on both sides of 10^4
    assert crossover(inside, ENC) == {"batch": 10_000, "projected": False}


def test_linear_loss_never_crosses_and_a_costly_one_crosses_at_once():
    lin = _model("binary", (256, 1024, 4096), lambda b: 1e-6 * b)
    assert crossover(lin, ENC)["batch"] is None and "none" in crossover(lin, ENC)["note"]
    costly = _model("spectral", (256, 1024), lambda b: 1e-3 * b)
    assert crossover(costly, ENC)["batch"] is None and "already at B=256" in crossover(costly, ENC)["note"]


def test_report_and_table_mark_projected_cells():
    quad = _model("ranking", (256, 1024), lambda b: 1e-8 * b * b)
    out = report([ENC], [quad], [256, 1024, 4096])
    cells = out["shares"]["net@32"]["ranking"]
    assert [c["projected"] for c in cells.values()] == [False, False, True]
    assert cells["4096"]["share"] == pytest.approx(1e-8 * 4096 / (1e-8 * 4096 + 1e-4), abs=1e-4)
    text = table(out, [256, 1024, 4096]).splitlines()
    assert text[0].split()[-4:-2] == ["1k", "4k"] and text[1].split()[-2].endswith("*")
    assert text[1].split()[-1] == "9.77k*"  # B* = 10^4 = 9.77·1024, projected


def test_cli_tiny_run(capsys):
    assert main(["bench", "step", "--encoders", "bb_convnet_tiny@16", "--pairs", "4", "--batch-sizes", "256", "4096",
                 "--losses", "ranking", "spectral", "--repeats", "1", "--max-batch", "65536", "--threads", "1",
                 "--dim", "32"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["bench"] == "step" and set(out["encoders"]) == {"bb_convnet_tiny@16"}
    assert out["encoders"]["bb_convnet_tiny@16"]["seconds_per_pair"] > 0
    shares = out["shares"]["bb_convnet_tiny@16"]
    assert set(shares) == {"ranking", "spectral"} and list(shares["ranking"]) == ["256", "1024", "4096", "16384", "65536"]
    assert [c["projected"] for c in shares["ranking"].values()] == [False, True, False, True, True]
    assert shares["ranking"]["4096"]["share"] > shares["ranking"]["256"]["share"]  # O(B²): 256× the work of 256
    assert set(out["crossover"]["bb_convnet_tiny@16"]) == {"ranking", "spectral"}
    assert any(line.startswith("bb_convnet_tiny@16") and "ranking" in line for line in lines)


def test_cli_rejects_bad_input(capsys):
    assert main(["bench", "step", "--encoders", "resnet18"]) == 2
    assert "expected NAME@IMAGE_SIZE" in capsys.readouterr().err
    assert main(["bench", "step", "--losses", "nce"]) == 2
    assert "unknown loss 'nce'" in capsys.readouterr().err
