"""The optimiser: LARS's trust ratio against a float64 hand computation, lr = base·B/256, no weight decay and no
LARS adaptation on norms and biases, and the warmup + cosine schedule at given steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.config import OptimConfig
from pretrain.optim import WarmupCosine, base_lr, build_optimizer, build_scalar_optimizer


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    for p in net.parameters():  # non-trivial norms everywhere, and gradients of a known value
        p.data.normal_()
        p.grad = torch.randn_like(p)
    return net


def test_lr_scales_with_the_global_batch():
    assert base_lr(OptimConfig(name="lars"), 512) == pytest.approx(0.3 * 512 / 256)
    assert base_lr(OptimConfig(name="adamw"), 1024) == pytest.approx(1e-3 * 1024 / 256)
    assert base_lr(OptimConfig(name="lars", lr=0.05), 4096) == 0.05  # a given lr is taken as it is


def test_lr_at_256_scales_linearly_or_by_the_square_root():
    assert base_lr(OptimConfig(name="lars", lr_at_256=1.2, scaling="sqrt"), 256) == pytest.approx(1.2)
    assert base_lr(OptimConfig(name="lars", lr_at_256=1.2, scaling="sqrt"), 4096) == pytest.approx(1.2 * 4)
    assert base_lr(OptimConfig(name="lars", lr_at_256=1.2), 1024) == pytest.approx(1.2 * 4)
    assert base_lr(OptimConfig(name="adamw", scaling="sqrt"), 1024) == pytest.approx(1e-3 * 2)
    assert base_lr(OptimConfig(lr=0.1, lr_at_256=0.2, scaling="sqrt"), 1024) == 0.1  # an override of lr wins


def test_lars_step_matches_a_float64_hand_computation():
    """Matrices: u = lr·τ·(g + λw) with τ = η‖w‖ / (‖g‖ + λ‖w‖ + ε); norms and biases: plain u = lr·g (no decay,
    no adaptation). First step with momentum: the buffer is the (adapted) gradient itself."""
    net = _net()
    wd, eta, eps, batch = 1e-2, 1e-3, 1e-8, 512
    lr = 0.3 * batch / 256
    before = {n: (p.detach().double().clone(), p.grad.double().clone()) for n, p in net.named_parameters()}
    opt = build_optimizer(net, OptimConfig(name="lars", weight_decay=wd, momentum=0.9), batch)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {n for n, p in net.named_parameters() if id(p) in decayed} == {"0.weight", "2.weight"}
    opt.step()
    for name, p in net.named_parameters():
        w, g = before[name]
        if w.ndim > 1:
            trust = eta * w.norm() / (g.norm() + wd * w.norm() + eps)
            expected = w - lr * trust * (g + wd * w)
            assert float(trust) < 0.01  # the adaptation is real: far from 1
        else:
            expected = w - lr * g
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-7, msg=name)


def test_adamw_decays_matrices_only():
    net = _net()
    opt = build_optimizer(net, OptimConfig(name="adamw"), 256)
    assert isinstance(opt, torch.optim.AdamW)
    by_decay = {g["weight_decay"]: sorted(tuple(p.shape) for p in g["params"]) for g in opt.param_groups}
    assert by_decay == {0.05: [(3, 5), (5, 6)], 0.0: [(3,), (5,), (5,), (5,)]}
    assert all(g["lr"] == pytest.approx(1e-3) for g in opt.param_groups)


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_warmup_then_cosine_at_given_steps(min_ratio):
    """100 steps, 10 % warmup from lr0·1e-3 linearly to lr0, then lr_min + ½(lr0 − lr_min)(1 + cos(π t/90))."""
    net = _net()
    opt = build_optimizer(net, OptimConfig(name="lars"), 256)
    lr0 = 0.3
    sched = WarmupCosine(opt, total_steps=100, warmup_fraction=0.1, min_lr_ratio=min_ratio)
    lr_min = min_ratio * lr0

    def expected(step: int) -> float:
        if step < 10:
            return lr0 * 1e-3 + step * (lr0 - lr0 * 1e-3) / 10
        return lr_min + 0.5 * (lr0 - lr_min) * (1 + math.cos(math.pi * (step - 10) / 90))

    got = {0: opt.param_groups[0]["lr"]}
    for step in range(1, 101):
        sched.step()
        got[step] = opt.param_groups[0]["lr"]
        assert len({g["lr"] for g in opt.param_groups}) == 1  # every group follows the schedule
    for step in (0, 5, 10, 55, 99, 100):
        assert got[step] == pytest.approx(expected(step), rel=1e-9, abs=1e-12), step
    assert got[10] == pytest.approx(lr0) and got[55] == pytest.approx((lr0 + lr_min) / 2)
    assert got[100] == pytest.approx(lr_min, abs=1e-12)



class _WithScalars(nn.Module):
    """A network and an objective's two 0-d constants (like binary NCE's log-scale and bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.log_scale, self.bias = nn.Parameter(torch.tensor(2.3)), nn.Parameter(torch.tensor(-2.0))
        self.log_scale.grad, self.bias.grad = torch.tensor(50.0), torch.tensor(-0.5)


@pytest.mark.parametrize("name", ["lars", "adamw"])
def test_scalars_are_trained_by_adam_apart_from_the_network(name):
    """The network's optimiser holds every parameter with a dimension and no 0-d one; Adam holds exactly the 0-d
    ones at scalar_lr with no decay, and its first step moves each by lr·sign(g) whatever |g| (LARS's raw rate
    would move the log-scale by 0.3·50 = 15)."""
    model = _WithScalars()
    cfg = OptimConfig(name=name, scalar_lr=2e-3)
    net_opt, scalar_opt = build_optimizer(model, cfg, 256), build_scalar_optimizer(model, cfg)
    held = [p for g in net_opt.param_groups for p in g["params"]]
    assert sorted(id(p) for p in held) == sorted(id(p) for p in model.net.parameters())
    assert isinstance(scalar_opt, torch.optim.Adam) and scalar_opt.param_groups[0]["params"] == [model.log_scale,
                                                                                                 model.bias]
    assert scalar_opt.param_groups[0]["lr"] == 2e-3 and scalar_opt.param_groups[0]["weight_decay"] == 0
    scalar_opt.step()
    assert float(model.log_scale) == pytest.approx(2.3 - 2e-3, rel=1e-6)
    assert float(model.bias) == pytest.approx(-2.0 + 2e-3, rel=1e-6)
    assert build_scalar_optimizer(model.net, cfg) is None  # a network alone has none


def test_the_scalars_schedule_follows_the_networks():
    """Warmup + cosine on both optimisers: at every step the scalar lr is scalar_lr × the network's lr / its base."""
    model = _WithScalars()
    cfg = OptimConfig(name="lars", scalar_lr=1e-3, min_lr_ratio=0.1)
    net_opt, scalar_opt = build_optimizer(model, cfg, 256), build_scalar_optimizer(model, cfg)
    scheds = [WarmupCosine(o, total_steps=50, warmup_fraction=0.2, min_lr_ratio=0.1) for o in (net_opt, scalar_opt)]
    for _ in range(50):
        assert scalar_opt.param_groups[0]["lr"] == pytest.approx(1e-3 * net_opt.param_groups[0]["lr"] / 0.3, rel=1e-9)
        for s in scheds:
            s.step()
    assert scalar_opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_binary_nce_learns_under_lars(tmp_path, digits_shards):
    """Binary NCE on the digits under LARS at a large rate (1.2), where its log-scale t' used to get LARS's raw rate
    and run to −∞ within 60 steps (the loss then falls to a constant predictor's, log(1+k) + k·log(1+1/k), with no
    gradient left for the encoder): t' stays near its init (log 10), so the loss falls by separating the embeddings;
    the method keeps the scalars' Adam in its checkpoint."""
    from cluster.run_config import load_run_config
    from pretrain.trainer import run_single_process

    k = 8
    cfg = load_run_config(None, [
        "model.encoder=bb_convnet_tiny", "model.proj_hidden=64", "model.proj_dim=32", "data.image_size=16",
        f"data.train={digits_shards['train']}", "batch_size=128", "steps=100", "log_every=5", "checkpoint_every=100",
        "cluster.workers=1", "loss.name=binary", f"loss.num_negatives={k}", "optim.name=lars",
        "optim.lr_at_256=1.2", "optim.scaling=sqrt"])
    trainer, hooks = run_single_process(cfg, tmp_path / "run")
    losses = [m["loss"] for m in hooks.logs if "loss" in m]
    assert 1.5 < float(trainer.method.net.loss.logit_scale) < 3.0
    assert sum(losses[-4:]) / 4 < 0.25 * losses[0], losses
    assert set(trainer.method.optimizers) == {"main", "main_scalars"}
    state = torch.load(next((tmp_path / "run").rglob("state.pt")), weights_only=True)
    assert set(state["method"]["optimizers"]) == set(state["method"]["schedulers"]) == {"main", "main_scalars"}
