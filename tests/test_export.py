"""`bigbatch export` and `load_encoder`: the exported encoder gives the checkpoint's features, loads with timm alone
for a stock architecture, is refused when its weights do not fit its config.json, and feeds `bigbatch probe`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.cli import main
from cluster.run_config import load_run_config
from data_pipeline.errors import UserInputError
from pretrain.checkpoint import load_method
from pretrain.export import export_encoder, load_encoder
from pretrain.trainer import run_single_process

TINY = ["data.image_size=16", "batch_size=32", "steps=2", "cluster.workers=1", "model.proj_hidden=64",
        "model.proj_dim=32"]
RUNS = {
    "convnet": ["model.encoder=bb_convnet_tiny"],
    "resnet18-small-stem": ["model.encoder=resnet18", "model.small_stem=true", "batch_size=16", "steps=1"],
    "resnet18-stock": ["model.encoder=resnet18", "model.small_stem=false", "batch_size=16", "steps=1"],
    "vae-mu": ["model.encoder=bb_convnet_tiny", "method=vae", "vae.latent_dim=16"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_shards) -> dict[str, Path]:
    """Tiny real runs (one process, a step or two on the digits), one per architecture/method exported below."""
    root = tmp_path_factory.mktemp("runs")
    for name, items in RUNS.items():
        cfg = load_run_config(None, [*TINY, *items, f"data.train={digits_shards['train']}", f"name={name}"])
        run_single_process(cfg, root / name)
    return {name: root / name for name in RUNS}


def _images(n: int = 12, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("name", ["convnet", "resnet18-small-stem", "vae-mu"])
def test_exported_features_equal_the_checkpoints(runs, tmp_path, name):
    out = export_encoder(runs[name], tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == (["config.json", "heads.safetensors", "model.safetensors"]
                                                     if name == "vae-mu" else ["config.json", "model.safetensors"])
    encoder = load_encoder(out)
    method, _ = load_method(runs[name])
    x = _images()
    assert isinstance(encoder, torch.nn.Module) and not encoder.training
    torch.testing.assert_close(encoder(x), method.represent(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(encoder(x.float() / 255), method.represent(x), atol=1e-6, rtol=0)  # float [0, 1] input
    dim = 16 if name == "vae-mu" else method.encoder.num_features  # a VAE's probe used μ
    assert encoder(x).shape[1] == encoder.num_features == dim


def test_projection_head_exported_on_request(runs, tmp_path):
    out = export_encoder(runs["convnet"], tmp_path / "export", with_projection=True)
    method, _ = load_method(runs["convnet"])
    x = _images()
    projected = load_encoder(out, projection=True)
    torch.testing.assert_close(projected(x), method.net.projector(method.represent(x)), atol=1e-6, rtol=0)
    assert projected.num_features == 32
    with pytest.raises(UserInputError, match="without the projection head"):
        load_encoder(export_encoder(runs["convnet"], tmp_path / "plain"), projection=True)
    with pytest.raises(UserInputError, match="vae run has no projection head"):
        export_encoder(runs["vae-mu"], tmp_path / "vae", with_projection=True)


TIMM_ONLY = r"""
import sys, timm, torch
out, x_path, result = sys.argv[1:4]
a = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
b = timm.create_model("resnet18", pretrained=True, num_classes=0,
                      pretrained_cfg_overlay=dict(file=f"{out}/model.safetensors")).eval()
cfg = timm.data.resolve_data_config({}, model=a)
mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
x = (torch.load(x_path).float() / 255 - mean) / std
with torch.no_grad():
    torch.save({"a": a(x), "b": b(x), "cfg": cfg, "bigbatch_imported": "pretrain" in sys.modules}, result)
"""


def test_stock_model_loads_with_timm_alone(runs, tmp_path):
    out = export_encoder(runs["resnet18-stock"], tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0 and config["num_features"] == 512
    assert config["model_args"]["in_chans"] == 3
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 16, 16] and pcfg["num_classes"] == 0 and pcfg["crop_pct"] == 1.0
    assert pcfg["interpolation"] == "bilinear" and pcfg["mean"] == [0.485, 0.456, 0.406]
    x = _images()
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no bigbatch on the path: timm alone
    subprocess.run([sys.executable, "-c", TIMM_ONLY, str(out), str(tmp_path / "x.pt"), str(tmp_path / "r.pt")],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    r = torch.load(tmp_path / "r.pt")
    assert not r["bigbatch_imported"] and r["cfg"]["input_size"] == (3, 16, 16)
    expected = load_encoder(out)(x)
    torch.testing.assert_close(r["a"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(r["b"], expected, atol=1e-6, rtol=0)


def test_small_stem_export_rebuilds_through_bigbatchs_timm_entrypoint(runs, tmp_path):
    """A small-stem ResNet is not stock timm: config.json names bb_timm with the stem in model_args."""
    import timm

    out = export_encoder(runs["resnet18-small-stem"], tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "bb_timm"
    assert {k: config["model_args"][k] for k in ("base_model", "small_stem", "norm")} == \
        {"base_model": "resnet18", "small_stem": True, "norm": "batch"}
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # bigbatch imported: bb_timm registered
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    encoder = load_encoder(out)
    x = _images()
    torch.testing.assert_close(model(encoder.normalize(x)), encoder(x), atol=1e-6, rtol=0)


def test_weights_that_do_not_fit_the_config_are_refused(runs, tmp_path, capsys):
    conv = export_encoder(runs["convnet"], tmp_path / "conv")
    other = export_encoder(runs["resnet18-small-stem"], tmp_path / "other")
    shutil.copyfile(other / "model.safetensors", conv / "model.safetensors")
    with pytest.raises(UserInputError, match=r"model\.safetensors: does not match bb_convnet_tiny of config\.json: "):
        load_encoder(conv)
    assert main(["probe", str(conv), "--train", "digits", "--test", "digits-holdout"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match bb_convnet_tiny" in err and "missing features.0.weight" in err
    (conv / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match="not a readable safetensors file"):
        load_encoder(conv)
    (conv / "config.json").write_text("{")
    with pytest.raises(UserInputError, match=r"config\.json: not valid JSON"):
        load_encoder(conv)


def test_export_cli(runs, tmp_path, capsys):
    out = tmp_path / "enc"
    assert main(["export", str(runs["convnet"]), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    assert "load_encoder" in capsys.readouterr().out
    mistakes = [
        (["export", str(runs["convnet"]), "--out", str(out)], "directory is not empty (use --force"),
        (["export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "o")], "no such file or directory"),
        (["export", str(runs["convnet"]), "--out", str(out / "config.json")], "exists and is not a directory"),
    ]
    for argv, message in mistakes:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert main(["export", str(runs["vae-mu"]), "--out", str(out), "--force"]) == 0  # replaced
    assert json.loads((out / "config.json").read_text())["bigbatch"]["method"] == "vae"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_failed_export_leaves_nothing_that_reads_as_valid(runs, tmp_path, monkeypatch):
    import pretrain.export as export

    out = export_encoder(runs["convnet"], tmp_path / "enc")
    before = (out / "model.safetensors").read_bytes()

    def crash(path, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "load_encoder", crash)  # the read-back after writing
    for target, force in ((tmp_path / "new", False), (out, True)):
        with pytest.raises(OSError, match="disk full"):
            export.export_encoder(runs["vae-mu"], target, force=force)
    assert not (tmp_path / "new").exists()
    assert (out / "model.safetensors").read_bytes() == before  # the old export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_probe_on_export_equals_probe_on_run(runs, tmp_path, digits_shards):
    from eval.run_probe import probe_run

    out = export_encoder(runs["convnet"], tmp_path / "enc")
    sources = str(digits_shards["train"]), str(digits_shards["holdout"])
    on_run = probe_run(runs["convnet"], *sources, baselines=("random-init",))
    on_export = probe_run(out, *sources, baselines=("random-init",))
    assert on_export["image_size"] == on_run["image_size"] == 16
    for key in ("top1", "top5", "knn_top1", "dim"):
        assert on_export["method"][key] == on_run["method"][key]
    assert on_export["baselines"]["random-init"]["top1"] == on_run["baselines"]["random-init"]["top1"]


# -- a run in an S3 bucket (moto's server on 127.0.0.1) ---------------------------------------------------------
@pytest.fixture()
def s3(monkeypatch):
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    import fsspec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    yield boto3.client("s3", endpoint_url=endpoint)
    fsspec.AbstractFileSystem.clear_instance_cache()
    server.stop()


def test_export_from_an_s3_run(runs, tmp_path, s3, capsys):
    s3.create_bucket(Bucket="runs")
    for p in runs["convnet"].rglob("*"):
        if p.is_file():
            s3.upload_file(str(p), "runs", f"team/convnet/{p.relative_to(runs['convnet'])}")
    out = export_encoder("s3://runs/team/convnet", tmp_path / "enc")
    method, _ = load_method(runs["convnet"])
    x = _images()
    torch.testing.assert_close(load_encoder(out)(x), method.represent(x), atol=1e-6, rtol=0)
    assert json.loads((out / "config.json").read_text())["bigbatch"]["source"]["location"] == "s3://runs/team/convnet"
    assert main(["export", "s3://runs/team/missing", "--out", str(tmp_path / "o")]) == 2
    assert "s3://runs/team/missing: no such file or directory" in capsys.readouterr().err
