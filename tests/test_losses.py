"""Loss values and gradients against float64 references written from docs/design.md ("Losses")'s formulas; the memory-bounded
ranking form against the plain one; bf16 autocast; masking without overflow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import BinaryNCE, RankingNCE, SpectralContrastive, build_loss


# -- float64 references, straight from the formulas (loops, no shared code with the modules) -------------------
def ref_ranking(z1, z2, tau):
    u = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2 = u.shape[0]
    n = n2 // 2
    total = 0.0
    for k in range(n2):
        p = (k + n) % n2
        s = [u[k] @ u[j] / tau for j in range(n2)]
        total = total - s[p] + torch.logsumexp(torch.stack([s[j] for j in range(n2) if j != k]), 0)
    return total / n2


def ref_binary_shift(z1, z2, t, b, k):
    u1, u2 = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    n = u1.shape[0]
    terms = []
    for a, o in ((u1, u2), (u2, u1)):
        for i in range(n):
            li = -torch.log(torch.sigmoid(t * (a[i] @ o[i]) + b))
            for m in range(1, k + 1):
                li = li - torch.log(torch.sigmoid(-(t * (a[i] @ o[(i + m) % n]) + b)))
            terms.append(li)
    return torch.stack(terms).mean()


def ref_binary_all_pairs(z1, z2, t, b):
    u = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2 = u.shape[0]
    total = 0.0
    for k in range(n2):
        for j in range(n2):
            if j == k:
                continue
            y = 1.0 if j == (k + n2 // 2) % n2 else -1.0
            total = total - torch.log(torch.sigmoid(y * (t * (u[k] @ u[j]) + b)))
    return total / n2


def ref_spectral(z1, z2, mu):
    z, w = z1.double(), z2.double()
    n = z.shape[0]
    pos = sum(z[i] @ w[i] for i in range(n))
    neg = sum((z[i] @ w[j]) ** 2 for i in range(n) for j in range(n) if i != j)
    return -2.0 / n * pos + mu * neg / (n * (n - 1))


def _pair(n=12, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype).requires_grad_(),
            torch.randn(n, d, generator=g, dtype=dtype).requires_grad_())


def _check(loss_fn, ref_fn, n=12, d=8):
    z1, z2 = _pair(n, d)
    r1, r2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    value = loss_fn(z1.float().detach().requires_grad_(), z2.float().detach().requires_grad_())
    ref = ref_fn(r1, r2)
    ref.backward()
    x1, x2 = z1.detach().float().requires_grad_(), z2.detach().float().requires_grad_()
    loss_fn(x1, x2).backward()
    assert float(value) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    assert torch.allclose(x1.grad.double(), r1.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(x2.grad.double(), r2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_ranking_matches_reference(tau):
    _check(RankingNCE(tau), lambda a, b: ref_ranking(a, b, tau))


@pytest.mark.parametrize("block", [1, 5, 7, 24, 1000])  # 24 rows: blocks that divide, don't divide, exceed
def test_blockwise_matches_reference(block):
    _check(RankingNCE(0.2, block_size=block), lambda a, b: ref_ranking(a, b, 0.2))


@pytest.mark.parametrize("block", [64, 100, 333])
def test_blockwise_equals_plain_at_size(block):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(500, 32, generator=g), torch.randn(500, 32, generator=g)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    la, lb = RankingNCE(0.1)(a1, a2), RankingNCE(0.1, block_size=block)(b1, b2)
    la.backward(), lb.backward()
    assert float(lb) == pytest.approx(float(la), rel=1e-6)
    assert torch.allclose(a1.grad, b1.grad, rtol=1e-4, atol=1e-7) and torch.allclose(a2.grad, b2.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("k", [1, 3])
def test_binary_shift_matches_reference(k):
    loss = BinaryNCE(num_negatives=k)
    t, b = math.exp(float(loss.logit_scale)), float(loss.bias)
    assert b == pytest.approx(-math.log(k))
    _check(loss, lambda a, c: ref_binary_shift(a, c, t, b, k))


def test_binary_all_pairs_matches_reference():
    loss = BinaryNCE(all_pairs=True, init_bias=-2.0)
    t = math.exp(float(loss.logit_scale))
    _check(loss, lambda a, c: ref_binary_all_pairs(a, c, t, -2.0))


def test_binary_temperature_and_bias_gradients():
    z1, z2 = _pair()
    loss = BinaryNCE(num_negatives=2)
    loss(z1.float(), z2.float()).backward()
    scale = torch.tensor(float(loss.logit_scale), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(float(loss.bias), dtype=torch.float64, requires_grad=True)
    ref_binary_shift(z1.detach(), z2.detach(), scale.exp(), bias, 2).backward()
    assert float(loss.logit_scale.grad) == pytest.approx(float(scale.grad), rel=1e-4)
    assert float(loss.bias.grad) == pytest.approx(float(bias.grad), rel=1e-4)


@pytest.mark.parametrize("mu", [1.0, 0.3])
def test_spectral_matches_reference(mu):
    _check(SpectralContrastive(mu), lambda a, b: ref_spectral(a, b, mu))


@pytest.mark.parametrize("name", ["ranking", "ranking-blockwise", "binary", "spectral"])
def test_bf16_autocast_close_to_fp32(name):
    from pretrain.config import LOSSES
    loss = build_loss(LOSSES[name](name=name, **({"block_size": 16} if name == "ranking-blockwise" else {})))
    g = torch.Generator().manual_seed(1)
    h = torch.randn(64, 32, generator=g)
    head = torch.nn.Linear(32, 16)
    z32 = head(h)
    ref = loss(z32[:32], z32[32:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z16 = head(h)
        assert z16.dtype == torch.bfloat16
        value = loss(z16[:32], z16[32:])
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert float(value) == pytest.approx(float(ref), rel=0.03, abs=0.03)


def test_one_registry_builds_every_config_loss_and_named_variant():
    from pretrain.config import LOSSES, BinaryLoss
    from pretrain.losses import BUILDERS, VARIANTS, build_variant, variant_config

    assert set(BUILDERS) == set(LOSSES) and {v["name"] for v in VARIANTS.values()} == set(LOSSES)
    tau = LOSSES["ranking"]().temperature  # the one default: the run config's
    assert build_variant("ranking").temperature == RankingNCE().temperature == tau
    assert build_variant("ranking-blockwise", block_size=64).block_size == 64
    assert variant_config("binary-all-pairs", block_size=64, num_negatives=None) == BinaryLoss(name="binary",
                                                                                                all_pairs=True)
    assert build_variant("binary-all-pairs").all_pairs and build_variant("binary").num_negatives == 1
    assert build_variant("spectral").mu == SpectralContrastive().mu == LOSSES["spectral"](name="spectral").mu
    with pytest.raises(ValueError, match="unknown loss 'nce'"):
        variant_config("nce")


@pytest.mark.parametrize("block", [None, 8])
def test_masking_never_overflows(block):
    # identical embeddings at a tiny temperature: logits of 1e4 must not overflow, the self term must be excluded
    z = torch.ones(16, 4, requires_grad=True)
    value = RankingNCE(1e-4, block_size=block)(z, z.detach().clone())
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()
    # logits are 1e4 in fp32 (resolution ~1e-3 there): log 31 up to that rounding
    assert float(value) == pytest.approx(math.log(31), abs=5e-3)  # all 31 other views equally similar


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="z1 and z2"):
        RankingNCE()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="num_negatives=4 needs a local batch > 4"):
        BinaryNCE(num_negatives=4)(torch.randn(4, 3), torch.randn(4, 3))


# -- multi-crop: M views per image stacked view-major, each view's positives the other M − 1 views of its image ---
def _image(k, n):
    return k % n


def ref_ranking_multi(z, m, tau):
    u = F.normalize(z.double(), dim=1)
    rows, n = u.shape[0], u.shape[0] // m
    total = 0.0
    for k in range(rows):
        s = [u[k] @ u[j] / tau for j in range(rows)]
        pos = [s[j] for j in range(rows) if j != k and _image(j, n) == _image(k, n)]
        total = total - torch.stack(pos).mean() + torch.logsumexp(torch.stack([s[j] for j in range(rows) if j != k]), 0)
    return total / rows


def ref_binary_all_pairs_multi(z, m, t, b):
    u = F.normalize(z.double(), dim=1)
    rows, n = u.shape[0], u.shape[0] // m
    total = 0.0
    for k in range(rows):
        for j in range(rows):
            if j != k:
                y = 1.0 if _image(j, n) == _image(k, n) else -1.0
                total = total - torch.log(torch.sigmoid(y * (t * (u[k] @ u[j]) + b)))
    return total / rows


def ref_binary_shift_multi(z, m, t, b, k):
    u = F.normalize(z.double(), dim=1).view(m, -1, z.shape[1])
    n = u.shape[1]
    terms = []
    for a in range(m):
        for c in range(m):
            if a == c:
                continue
            for i in range(n):
                li = -torch.log(torch.sigmoid(t * (u[a, i] @ u[c, i]) + b))
                for s in range(1, k + 1):
                    li = li - torch.log(torch.sigmoid(-(t * (u[a, i] @ u[c, (i + s) % n]) + b)))
                terms.append(li)
    return torch.stack(terms).mean()


def ref_spectral_multi(z, m, mu):
    v = z.double().view(m, -1, z.shape[1])
    pairs = [ref_spectral(v[a], v[c], mu) for a in range(m) for c in range(m) if a != c]
    return torch.stack(pairs).mean()


MULTI = {
    "ranking": (lambda: RankingNCE(0.2), lambda z, m, loss: ref_ranking_multi(z, m, 0.2)),
    "ranking-blockwise": (lambda: RankingNCE(0.2, block_size=7), lambda z, m, loss: ref_ranking_multi(z, m, 0.2)),
    "binary-all-pairs": (lambda: BinaryNCE(all_pairs=True, init_bias=-2.0),
                         lambda z, m, loss: ref_binary_all_pairs_multi(z, m, math.exp(float(loss.logit_scale)), -2.0)),
    "binary": (lambda: BinaryNCE(num_negatives=2),
               lambda z, m, loss: ref_binary_shift_multi(z, m, math.exp(float(loss.logit_scale)), float(loss.bias), 2)),
    "spectral": (lambda: SpectralContrastive(0.7), lambda z, m, loss: ref_spectral_multi(z, m, 0.7)),
}


@pytest.mark.parametrize("num_views", [3, 6])   # 2 global + 1 or 4 local views
@pytest.mark.parametrize("name", list(MULTI))
def test_multi_view_loss_matches_reference(name, num_views):
    make, ref_fn = MULTI[name]
    loss = make()
    g = torch.Generator().manual_seed(5)
    z = torch.randn(num_views * 5, 8, generator=g, dtype=torch.float64)
    r = z.clone().requires_grad_()
    ref = ref_fn(r, num_views, loss)
    ref.backward()
    x = z.float().requires_grad_()
    value = loss.stacked(x, num_views)
    value.backward()
    assert float(value) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    assert torch.allclose(x.grad.double(), r.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(MULTI))
def test_two_stacked_views_are_the_two_view_loss(name):
    """V = 2, L = 0: the stacked form is today's ``loss(z1, z2)``, and the multi-view reference is the two-view one."""
    make, ref_fn = MULTI[name]
    loss = make()
    z1, z2 = _pair(n=7)
    pair = loss(z1.float(), z2.float())
    assert float(loss.stacked(torch.cat([z1, z2]).float(), 2)) == float(pair)
    two_view = {"ranking": lambda: ref_ranking(z1, z2, 0.2), "ranking-blockwise": lambda: ref_ranking(z1, z2, 0.2),
                "binary-all-pairs": lambda: ref_binary_all_pairs(z1, z2, math.exp(float(loss.logit_scale)), -2.0),
                "binary": lambda: ref_binary_shift(z1, z2, math.exp(float(loss.logit_scale)), float(loss.bias), 2),
                "spectral": lambda: ref_spectral(z1, z2, 0.7)}[name]()
    assert float(ref_fn(torch.cat([z1, z2]), 2, loss)) == pytest.approx(float(two_view), rel=1e-12)
    assert float(pair) == pytest.approx(float(two_view), rel=1e-5, abs=1e-6)


def test_stacked_shape_errors():
    with pytest.raises(ValueError, match="num_views >= 2"):
        RankingNCE().stacked(torch.randn(10, 3), 3)
    with pytest.raises(ValueError, match="num_views >= 2"):
        SpectralContrastive().stacked(torch.randn(10, 3), 1)
