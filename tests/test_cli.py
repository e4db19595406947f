"""The CLI entry point: help lists the commands; a missing subcommand exits non-zero."""

import subprocess
import sys


def test_help_lists_bench():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "--help"], capture_output=True, text=True, check=True)
    assert "bench" in out.stdout


def test_no_command_exits_2():
    from cluster.cli import main
    assert main([]) == 2


def test_bench_layout_prints_every_setting_as_a_ratio(capsys):
    """`bigbatch bench layout` times the real train step under all four layouts (and bf16 NHWC compiled: here by
    aot_eager, Dynamo and AOTAutograd without inductor's minute of C++ generation) and reports each against fp32
    NCHW."""
    import json

    from cluster.cli import main
    assert main(["bench", "layout", "model.encoder=bb_convnet_tiny", "data.image_size=16", "--batch", "16",
                 "--steps", "1", "--compile", "--compile-backend", "aot_eager", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    speeds = {k[: -len("_images_per_s")]: v for k, v in out.items() if k.endswith("_images_per_s")}
    assert set(speeds) == {"fp32_nchw", "fp32_nhwc", "bf16_nchw", "bf16_nhwc",
                           "bf16_nhwc_compiled"} and min(speeds.values()) > 0
    for k in ("fp32_nhwc", "bf16_nchw", "bf16_nhwc", "bf16_nhwc_compiled"):
        assert abs(out[f"{k}_over_fp32_nchw"] - speeds[k] / speeds["fp32_nchw"]) < 0.01


def test_bench_layout_runs_a_preset_that_needs_data(capsys):
    """The views are random, so a preset whose data.train must be given (cifar10-cpu) is timed without it."""
    import json

    from cluster.cli import main
    assert main(["bench", "layout", "cifar10-cpu", "model.encoder=bb_convnet_tiny", "--batch", "8", "--steps", "1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["config"] == "cifar10-cpu"
