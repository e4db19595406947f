"""Every subcommand answers a user's mistake with one line `bigbatch COMMAND: MESSAGE` naming the input, exit code 2
and no traceback (each fails before Ray or any training starts; real CLI processes for --debug and the bugs). --debug adds the traceback; a
bug (any other exception) keeps its traceback and exit code 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.cli import main

BAD = "BAD"  # placeholder replaced by the fixture's paths


@pytest.fixture(scope="module")
def bad(tmp_path_factory, digits_shards) -> dict[str, str]:
    """Inputs with one mistake each."""
    root = tmp_path_factory.mktemp("bad_inputs")
    a_file = root / "a_file.txt"
    a_file.write_text("not a directory\n")
    bad_manifest = root / "bad_manifest"
    shutil.copytree(digits_shards["holdout"], bad_manifest)
    (bad_manifest / "manifest.json").write_text('{"shards": [')  # truncated JSON
    corrupt_run = root / "corrupt_run" / "checkpoint_000001"
    corrupt_run.mkdir(parents=True)
    (corrupt_run / "state.pt").write_bytes(b"PK\x03\x04 truncated zip")
    pickled = root / "pickled_ckpt"
    pickled.mkdir()
    torch.save({"format": 1, "step": 1, "obj": _Evil()}, pickled / "state.pt")
    bad_cfg_run = root / "bad_cfg_run"
    bad_cfg_run.mkdir()
    (bad_cfg_run / "config.yaml").write_text("method: [unclosed\n")
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("method: simclr\nmodel: {encoder: bb_convnet_tiny, widht: 3}\n")
    return {"file": str(a_file), "bad_manifest": str(bad_manifest), "corrupt_run": str(corrupt_run.parent),
            "pickled": str(pickled), "bad_cfg_run": str(bad_cfg_run), "bad_yaml": str(bad_yaml),
            "missing": str(root / "no_such_dir"), "runs": str(root / "runs")}


class _Evil:
    """A pickled object: weights_only loading must refuse it."""


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BIGBATCH_DEBUG": "", **(env or {})})


# (command line with {placeholders}, the command's name in the message, fragments the message must contain)
CASES = [
    ("pretrain {bad_yaml}", "pretrain", ["{bad_yaml}", "model.widht: unknown key"]),
    ("pretrain no-such-preset", "pretrain", ["'no-such-preset'", "presets:"]),
    ("pretrain --name ../escaped", "pretrain", ["run name '../escaped'"]),
    ("pretrain --name /tmp/abs", "pretrain", ["run name '/tmp/abs'"]),
    ("pretrain name=", "pretrain", ["run name ''"]),
    ("pretrain model.encoder=resnet1", "pretrain", ["unknown encoder 'resnet1'", "close matches: resnet18"]),
    ("pretrain loss.name=binary loss.temperature=0.1", "pretrain",
     ["loss.temperature: not used by loss.name=binary"]),
    ("pretrain method=gan optim.lr=0.1", "pretrain", ["optim: not used by method=gan"]),
    ("pretrain steps=10 epochs=2", "pretrain", ["steps=10 and epochs=2.0: give one of them"]),
    ("pretrain data.train={missing} cluster.storage_path={runs}", "pretrain", ["{missing}"]),
    ("pretrain data.probe_test={missing} cluster.storage_path={runs}", "pretrain", ["{missing}"]),
    ("pretrain cluster.storage_path={file}", "pretrain", ["{file}"]),
    ("pretrain digits cifar10-cpu", "pretrain", ["only one CONFIG"]),
    ("submit loss.name=bogus --address http://127.0.0.1:9", "submit", ["loss.name: 'bogus' is not one of"]),
    ("submit --address http://127.0.0.1:9 --connect-timeout 0", "submit", ["http://127.0.0.1:9"]),
    ("shards write {missing} {runs}/out", "shards write", ["{missing}"]),
    ("shards write digits {file}", "shards write", ["{file}"]),
    ("shards inspect {missing}", "shards inspect", ["{missing}"]),
    ("shards inspect {bad_manifest}", "shards inspect", ["{bad_manifest}/manifest.json"]),
    ("shards inspect http://127.0.0.1:9/shards", "shards inspect",
     ["http://127.0.0.1:9/shards/manifest.json: cannot open", "ConnectionRefusedError"]),
    ("shards plan {missing}", "shards plan", ["{missing}"]),
    ("probe {missing} --train digits --test digits-holdout", "probe", ["{missing}"]),
    ("probe {corrupt_run} --train digits --test digits-holdout", "probe",
     ["{corrupt_run}", "no readable bigbatch checkpoint", "state.pt"]),
    ("probe {pickled} --train digits --test digits-holdout", "probe", ["{pickled}/state.pt", "weights-only"]),
    ("probe --train digits --test digits-holdout", "probe", ["give a checkpoint"]),
    ("probe --baseline pixels --image-size 16 --train {missing} --test digits-holdout", "probe", ["{missing}"]),
    ("probe --baseline pixel --image-size 8 --train digits --test digits", "probe", ["baseline 'pixel': not one"]),
    ("compare {missing}", "compare", ["{missing}: not a bigbatch run directory"]),
    ("compare {bad_cfg_run}", "compare", ["{bad_cfg_run}/config.yaml"]),
    ("bench data {missing}", "bench data", ["{missing}"]),
    ("bench losses --losses nosuch", "bench losses", ["unknown loss 'nosuch'"]),
    ("bench train model.widht=1", "bench train", ["model.widht: unknown key"]),
    ("bench layout loss.temprature=1", "bench layout", ["loss.temprature: unknown key"]),
]


@pytest.mark.parametrize(("line", "command", "fragments"), CASES, ids=[c[0].split(" {")[0][:40] for c in CASES])
def test_user_mistake_is_one_line_exit_2(bad, line, command, fragments, capsys, monkeypatch):
    """In this process (the entry point's own handler; real processes: test_debug_shows_the_traceback and the
    promise checks); a refused connection is retried once without backoff."""
    monkeypatch.delenv("BIGBATCH_DEBUG", raising=False)
    monkeypatch.setenv("BIGBATCH_IO_RETRIES", "1")
    monkeypatch.setenv("BIGBATCH_IO_BACKOFF", "0")
    code = main(line.format(**bad).split())
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith(f"bigbatch {command}: ")]
    assert len(lines) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment.format(**bad) in lines[0], lines[0]


def test_debug_shows_the_traceback(bad):
    for args, env in ((["--debug", "compare", bad["missing"]], None), (["compare", bad["missing"], "--debug"], None),
                      (["compare", bad["missing"]], {"BIGBATCH_DEBUG": "1"})):
        out = _cli(args, env)
        assert out.returncode == 2 and "Traceback" in out.stderr, out.stderr[-2000:]
        assert out.stderr.rstrip().splitlines()[-1].startswith(f"bigbatch compare: {bad['missing']}")


def test_a_bug_keeps_its_traceback(monkeypatch, bad):
    """Only user errors become one line: anything else propagates (the interpreter prints it, exit code 1)."""
    import eval.compare

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(eval.compare, "run_row", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["compare", bad["bad_cfg_run"]])


def test_read_only_run_directory(bad, tmp_path):
    """A storage path on a read-only file system (a bind mount remounted read-only in a private mount namespace)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a read-only mount")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} {ro} && "
              f"exec {sys.executable} -m cluster.cli pretrain cluster.storage_path={ro} --name x")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "BIGBATCH_DEBUG": ""})
    if "mount:" in out.stderr:
        pytest.skip(f"cannot mount here: {out.stderr.strip()}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == f"bigbatch pretrain: {ro}/x: Read-only file system"


def test_overrides_on_either_side_of_options(capsys):
    """KEY=VALUE items before and after options (`pretrain steps=20 --name x batch_size=128`)."""
    import yaml

    assert main(["pretrain", "steps=20", "--name", "x", "batch_size=128", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["steps"], cfg["name"], cfg["batch_size"]) == (20, "x", 128)
    assert main(["pretrain", "--print-config", "steps=7", "spectral", "--name", "2024"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["steps"], cfg["loss"]["name"], cfg["name"]) == (7, "spectral", "2024")  # a numeric name stays text
    with pytest.raises(SystemExit) as exc:  # an unknown option is still argparse's usage error
        main(["pretrain", "steps=2", "--nmae", "x"])
    assert exc.value.code == 2 and "unrecognized arguments: --nmae" in capsys.readouterr().err


def test_version_and_help_without_torch_or_ray():
    """`bigbatch --version` and every `--help` answer without importing torch or ray."""
    code = ("import sys, contextlib, io\n"
            "from cluster.cli import build_parser, main\n"
            "from cluster import __version__\n"
            "parser = build_parser()\n"
            "cmds = [[]] + [[c] for c in ('pretrain', 'submit', 'shards', 'probe', 'compare', 'bench')] + "
            "[['shards', a] for a in ('write', 'inspect', 'plan')] + "
            "[['bench', b] for b in ('data', 'losses', 'train', 'layout')]\n"
            "for cmd in cmds:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "        main([*cmd, '--help'])\n"
            "    assert 'usage: bigbatch' in out.getvalue(), cmd\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'timm', 'numpy') if m in sys.modules)\n"
            "print(__version__, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    from importlib.metadata import version
    assert out.stdout.split() == [version("bigbatch"), "[]"], out.stdout + out.stderr
    v = _cli(["--version"])
    assert v.returncode == 0 and v.stdout.strip() == f"bigbatch {version('bigbatch')}"


def test_a_mistyped_path_is_answered_before_torch_is_imported(tmp_path):
    """Every command that takes a path checks it before its torch/timm import: exit 2, the path named, no torch."""
    missing = str(tmp_path / "no-such")
    cmds = [["probe", missing, "--train", "digits", "--test", "digits-holdout"],
            ["probe", "--baseline", "pixels", "--image-size", "8", "--train", missing, "--test", "digits-holdout"],
            ["export", missing, "--out", str(tmp_path / "out")],
            ["shards", "write", missing, str(tmp_path / "shards")], ["shards", "inspect", missing],
            ["shards", "plan", missing], ["pretrain", f"data.train={missing}"], ["compare", missing]]
    code = ("import sys\n"
            "from cluster.cli import main\n"
            f"for cmd in {cmds!r}:\n"
            "    print(main(cmd), 'torch' in sys.modules, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:-1] == ["2 False"] * len(cmds), out.stdout + out.stderr[-2000:]
    lines = out.stderr.splitlines()
    assert len(lines) == len(cmds) and all(missing in line for line in lines), out.stderr


def test_license_is_apache_2_as_pyproject_says():
    root = Path(__file__).resolve().parents[1]
    text = (root / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (root / "pyproject.toml").read_text()


class _BadDataset(torch.utils.data.IterableDataset):
    def __iter__(self):
        from data_pipeline.badinput import BadInputError
        raise BadInputError("3 bad samples of 10 planned exceed max_bad_fraction=0.1; last: shard s-000001.tar")


def test_messages_of_wrapped_and_os_errors():
    """A user error re-raised by a DataLoader worker keeps its type; its one line is the original message. OS errors
    name the path; errors of any other type are not user errors."""
    from cluster.errors import is_user_error, one_line, user_message

    with pytest.raises(Exception) as exc:  # noqa: B017  (the type is what is checked)
        next(iter(torch.utils.data.DataLoader(_BadDataset(), num_workers=1)))
    assert is_user_error(exc.value) and "Traceback" in str(exc.value)  # torch puts the worker's traceback inside
    assert one_line(exc.value) == "3 bad samples of 10 planned exceed max_bad_fraction=0.1; last: shard s-000001.tar"
    assert user_message(OSError(30, "Read-only file system", "/runs/x")) == "/runs/x: Read-only file system"
    assert user_message(OSError(28, "No space left on device", "/runs/x/state.pt")).endswith("No space left on device")
    assert user_message(PermissionError(13, "Permission denied", "/data")) == "/data: Permission denied"
    assert user_message(OSError(5, "Input/output error", "/dev/sda")) is None  # a failing disk: not the user's input
    assert user_message(KeyError("x")) is None and user_message(RuntimeError("CUDA error")) is None

