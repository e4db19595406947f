"""SyncBatchNorm conversion keeps timm's fused BatchNormAct2d (activation + dropout): the converted encoder computes
the same function as the unconverted one the probe evaluates. SyncBatchNorm's forward outside a process group (eval
mode, or training without distributed) is plain batch norm, so this runs on CPU."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d

from pretrain.trainer import sync_batchnorm

GPU, CPU = torch.device("cuda", 0), torch.device("cpu")


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not near the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_100", "regnetx_002", "resnetv2_18"])
def test_converted_encoder_computes_the_same_function(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0)
    assert any(isinstance(m, BatchNormAct2d) for m in model.modules())  # the case torch's converter gets wrong
    _randomise_bn(model, 1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        expected = model(x)
    converted = sync_batchnorm(model, GPU, world_size=2)
    assert not any(type(m) is BatchNormAct2d or type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    converted.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-6)
    converted.train()  # training mode without a process group: plain batch statistics, activations still applied
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-5)


def test_conversion_only_for_multi_gpu_runs_with_sync_batchnorm_on():
    model = timm.create_model("mobilenetv3_small_100", num_classes=0)
    for device, world, enabled in ((CPU, 2, True), (GPU, 1, True), (GPU, 2, False)):
        out = sync_batchnorm(model, device, world_size=world, enabled=enabled)
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in out.modules()), (device, world, enabled)


def test_whole_method_is_converted_projection_head_included():
    from cluster.run_config import load_run_config
    from pretrain.methods import build_method

    cfg = load_run_config(None, ["model.encoder=regnetx_002", "model.small_stem=false", "model.proj_hidden=32"])
    method = sync_batchnorm(build_method(cfg), GPU, world_size=4)
    kinds = {type(m).__name__ for m in method.modules()}
    assert "SyncBatchNormAct" in kinds and "SyncBatchNorm" in kinds  # encoder's fused BN+act, head's BatchNorm1d
    assert not kinds & {"BatchNorm1d", "BatchNorm2d", "BatchNormAct2d"}
    assert method.net is method._train_net  # the unregistered training view still points at the converted net
