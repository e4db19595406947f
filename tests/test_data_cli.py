"""`bigbatch shards plan` prints the plan the stream runs; `bigbatch bench data` measures all three pipelines; every
user mistake given to `bigbatch shards write|inspect|plan` is one line on stderr naming the input, exit code 2,
no traceback (run as the `bigbatch` command a user types)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.manifest import load_manifest

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def test_shards_plan_json_is_the_streams_plan(digits_shards, capsys):
    from cluster.cli import main
    from data_pipeline.stream import StreamSpec, make_loader

    src = str(digits_shards["train"])
    assert main(["shards", "plan", src, "--world-size", "3", "--workers", "2", "--batch-size", "120",
                 "--lanes", "12", "--epoch", "2", "--seed", "7", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    n = load_manifest(src).num_samples
    assert plan["steps"] == -(-n // 120) and plan["repeated"] == plan["steps"] * 120 - n
    spec = StreamSpec(source=src, batch_size=40, num_workers=2, seed=7, augment=False, lanes=12)
    for r in range(3):
        loader = make_loader(spec, rank=r, world_size=3, epoch=2)
        assert len(loader) == plan["ranks"][r]["steps"]
        got = sorted(k for b in loader for k in b["key"])
        m = load_manifest(src)
        want = sorted(k for w in plan["ranks"][r]["workers"] for lane in w["lanes"] for s in lane["segments"]
                      for k in m.shards[s["shard"]].keys[s["start"]:s["stop"]])
        assert got == want
    assert main(["shards", "plan", src, "--world-size", "2", "--workers", "1"]) == 0
    assert "global batch 256 = 2 ranks × 128" in capsys.readouterr().out


def test_bench_data_measures_three_pipelines(small_shards, capsys):
    from cluster.cli import main

    assert main(["bench", "data", str(small_shards), "--seconds", "0.3", "--batch-size", "64",
                 "--local-views", "4"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert "torchvision ImageFolder + PIL" in "\n".join(out) and "bigbatch multi-crop 2x32+4x16" in "\n".join(out)
    for key in ("stream_pairs_per_s_per_core", "torchvision_pairs_per_s_per_core", "decode_images_per_s_per_core",
                "multicrop_pairs_per_s_per_core"):
        assert result[key] > 0
    assert result["multicrop_over_stream"] == pytest.approx(
        result["multicrop_pairs_per_s_per_core"] / result["stream_pairs_per_s_per_core"], rel=0.02)
    assert result["stream_over_torchvision"] == pytest.approx(
        result["stream_pairs_per_s_per_core"] / result["torchvision_pairs_per_s_per_core"], rel=0.02)


def test_bench_data_needs_no_labels(small_shards, tmp_path):
    """The ImageFolder baseline gets every image in one folder: shards without .cls export whole, no label made up."""
    import tarfile

    from cluster.bench.data_throughput import IMAGE_FOLDER_CLASS, export_image_folder

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    first = sorted(small_shards.glob("*.tar"))[0]
    with tarfile.open(first) as src, tarfile.open(unlabelled / first.name, "w") as dst:
        for member in src.getmembers():
            if not member.name.endswith(".cls"):
                dst.addfile(member, src.extractfile(member))
    n = export_image_folder(str(unlabelled), tmp_path / "folder")
    assert n == load_manifest(str(small_shards)).shards[0].samples == 64
    assert [p.name for p in (tmp_path / "folder").iterdir()] == [IMAGE_FOLDER_CLASS]
    assert len(list((tmp_path / "folder" / IMAGE_FOLDER_CLASS).iterdir())) == n


def bigbatch(*args: str) -> subprocess.CompletedProcess:
    """The installed console command (beside this interpreter), else ``python -m cluster.cli``."""
    exe = Path(sys.executable).with_name("bigbatch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cluster.cli"]
    env = {**os.environ, "BIGBATCH_IO_RETRIES": "0"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env)


def user_mistakes(tmp_path: Path, small_shards: Path) -> list[tuple[tuple[str, ...], str]]:
    """(arguments of `bigbatch shards`, what its one-line message says) for each mistake."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "manifest.json").write_text("{not json")
    not_ours = tmp_path / "notours"
    not_ours.mkdir()
    (not_ours / "manifest.json").write_text('{"hello": 1}')
    stale = tmp_path / "stale"
    shutil.copytree(small_shards, stale)
    first = sorted(stale.glob("*.tar"))[0]
    first.write_bytes(first.read_bytes()[:20000])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                      # closed on exit: connections are refused
    missing = tmp_path / "missing"
    return [
        (("inspect", str(missing)), f"{missing}: no such file or directory"),
        (("plan", str(missing)), f"{missing}: no such file or directory"),
        (("write", str(missing), str(tmp_path / "out")), f"{missing}: no such directory"),
        (("inspect", str(a_file)), f"{a_file}: not a shard directory"),
        (("plan", str(a_file)), f"{a_file}: not a shard directory"),
        (("write", "digits", str(a_file)), f"{a_file}: the output exists and is not a directory"),
        (("write", str(a_file), str(tmp_path / "out")), f"{a_file}: not a directory"),
        (("inspect", str(bad_json)), f"{bad_json / 'manifest.json'}: not valid JSON (Expecting property name"),
        (("plan", str(bad_json)), f"{bad_json / 'manifest.json'}: not valid JSON"),
        (("plan", str(not_ours)), f"{not_ours / 'manifest.json'}: not a bigbatch manifest (no 'shards' list)"),
        (("plan", str(tmp_path)), f"{tmp_path}: holds neither manifest.json nor *.tar files"),
        (("plan", str(stale)), f"{first}: 20000 bytes, but manifest.json lists 133120"),
        (("inspect", f"http://127.0.0.1:{port}/"), f"http://127.0.0.1:{port}/manifest.json: cannot open ("),
        (("plan", f"http://127.0.0.1:{port}/shards/manifest.json"), "cannot open (ConnectionRefusedError"),
    ]


def test_shards_commands_answer_user_mistakes_in_one_line(tmp_path, small_shards, capsys, monkeypatch):
    from cluster.cli import main

    monkeypatch.setenv("BIGBATCH_IO_RETRIES", "0")
    for args, message in user_mistakes(tmp_path, small_shards):
        assert main(["shards", *args]) == 2, args
        out, err = capsys.readouterr()
        assert err.startswith(f"bigbatch shards {args[0]}: ") and message in err, (args, err)
        assert err.count("\n") == 1 and out == "", (args, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_bigbatch_command_answers_user_mistakes_without_a_traceback(tmp_path, small_shards):
    """As a user types it (each start imports the CLI): exit code 2, one line, no traceback."""
    cases = user_mistakes(tmp_path, small_shards)
    for args, message in (cases[0], cases[8], cases[2], cases[12]):
        r = bigbatch("shards", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(f"bigbatch shards {args[0]}: ") and message in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and r.stdout == "", (args, r.stderr)
