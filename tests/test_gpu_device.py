"""Device bookkeeping of the GPU path, on CPU: pinned memory only for a CUDA target, a method's device follows
``.to()``, and the backend settings of a run (cuDNN autotuning, TF32, determinism, the bf16 warning). CUDA
availability and device queries are emulated with monkeypatch; no arithmetic is faked."""

from __future__ import annotations

import os

import pytest
import torch
from generative_utils import small_cfg

import data_pipeline.stream as stream_module
from cluster.run_config import load_run_config
from pretrain import precision
from pretrain.checkpoint import load_method, save_checkpoint
from pretrain.methods import build_method
from pretrain.trainer import LocalHooks, Trainer

TINY = ["model.encoder=bb_convnet_tiny", "model.proj_hidden=32", "data.image_size=16", "batch_size=32",
        "cluster.workers=1"]


@pytest.fixture
def loaders(monkeypatch):
    """A GPU host (torch.cuda.is_available() is True), and the keyword arguments of every DataLoader the stream
    builds (the loader itself is never iterated: no worker processes)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    made: list[dict] = []

    def recording_loader(dataset, **kwargs):
        made.append(kwargs)
        return iter(())

    monkeypatch.setattr(stream_module, "DataLoader", recording_loader)
    return made


def test_training_stream_pins_only_for_a_cuda_device(tmp_path, digits_shards, loaders):
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "data.loader_workers=1"])
    trainer = Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=LocalHooks(tmp_path, 1))
    assert trainer.spec.pin_memory is False
    list(trainer._loader(epoch=0, start_batch=0))
    assert loaders and all(kw["pin_memory"] is False for kw in loaders)


def test_probe_features_on_cpu_never_pin_on_a_gpu_host(digits_shards, loaders):
    from eval.features import extract_features

    with pytest.raises(ValueError, match="no samples"):  # the recording loader yields nothing
        extract_features(lambda x: x.float().flatten(1), str(digits_shards["holdout"]), 16, device="cpu")
    assert [kw["pin_memory"] for kw in loaders] == [False]
    loaders.clear()
    with pytest.raises(ValueError, match="no samples"):
        extract_features(lambda x: x, str(digits_shards["holdout"]), 16, device="cuda")
    assert [kw["pin_memory"] for kw in loaders] == [True]


def test_stream_spec_default_does_not_pin(digits_shards, loaders):
    spec = stream_module.StreamSpec(source=str(digits_shards["train"]), batch_size=32, image_size=16)
    list(stream_module.make_loader(spec))
    assert [kw["pin_memory"] for kw in loaders] == [False]


# -- the method's device ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["vae", "gan", "simclr"])
def test_method_device_follows_to(method):
    """``.to(device)`` moves the parameters; the method's sampling and noise follow them (the "meta" device stands in
    for a GPU: tensors with shapes and devices but no data)."""
    m = build_method(small_cfg(method)).eval()
    assert m.device == torch.device("cpu")
    m.to("meta")
    assert m.device.type == "meta"
    if method != "simclr":
        assert m.sample(4).device.type == "meta"
        assert m.represent(torch.zeros(2, 3, 16, 16, dtype=torch.uint8, device="meta")).device.type == "meta"
    if method == "vae":
        assert m.sample_noise(3, 8).device.type == "meta"
    if method == "gan":
        assert m.sample_noise(3).device.type == "meta"


@pytest.mark.parametrize("method", ["vae", "gan"])
def test_loaded_method_samples_on_the_device_it_was_loaded_to(tmp_path, method):
    cfg = small_cfg(method)
    m = build_method(cfg)
    save_checkpoint(tmp_path / "ckpt", rank=0, method_state={"model": m.state_dict()}, step=1,
                    stream={"epoch": 0, "batch": 1}, config=cfg.model_dump(mode="json"))
    loaded, _ = load_method(tmp_path / "ckpt", device="meta")
    assert loaded.sample(4, seed=0).device.type == "meta"
    cpu, _ = load_method(tmp_path / "ckpt", device="cpu")
    assert torch.equal(cpu.sample(4, seed=0), m.eval().sample(4, seed=0))  # same seed, same samples


# -- backend settings ---------------------------------------------------------------------------------------------
@pytest.fixture
def restore_backends(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved[4], saved[5]


def test_deterministic_is_strict(tmp_path, digits_shards, restore_backends):
    """deterministic=true: an op without a deterministic kernel raises (no warn_only), cuBLAS gets its fixed
    workspace before the first call."""
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "deterministic=true"])
    Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=LocalHooks(tmp_path, 1))
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == precision.CUBLAS_WORKSPACE
    cfg = load_run_config(None, [*TINY, f"data.train={digits_shards['train']}", "deterministic=false"])
    Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"), hooks=LocalHooks(tmp_path, 1))
    assert not torch.are_deterministic_algorithms_enabled()  # a later run in the same process is not affected


def test_cuda_defaults_autotune_and_tf32(restore_backends, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    gpu = torch.device("cuda", 0)
    precision.configure_backends(gpu, precision="fp32", tf32=True, deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cudnn.conv.fp32_precision == "tf32"
    precision.configure_backends(gpu, precision="fp32", tf32=False, deterministic=True)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert torch.backends.cuda.matmul.fp32_precision == "ieee" and torch.backends.cudnn.conv.fp32_precision == "ieee"


def test_cpu_leaves_cuda_settings_alone(restore_backends):
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision)
    precision.configure_backends(torch.device("cpu"), precision="bf16", tf32=True, deterministic=False)
    assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision) == before


@pytest.mark.parametrize(("native", "warns"), [(False, True), (True, False)])
def test_bf16_on_a_gpu_without_native_bf16_warns_and_suggests_fp16(restore_backends, monkeypatch, native, warns):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)  # emulated bf16 (V100: True with emulation) is not what we want
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision.configure_backends(torch.device("cuda", 0), precision="bf16", tf32=True, deterministic=False)
    messages = [str(w.message) for w in caught]
    assert any("Tesla V100" in m and "use precision=fp16" in m for m in messages) == warns, messages
    assert asked == [False]
