"""Each distillation loss against a direct, slow (loops, float64) implementation on small input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from facekd.losses import distill as D

torch.set_num_threads(1)


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _huber(a, b):
    x = abs(a - b)
    return 0.5 * x * x if x < 1 else x - 0.5


def _dist(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def test_l2_and_cosine():
    s, t = _rand(4, 5, seed=1), _rand(4, 5, seed=2)
    e = D.l2_elements(s, t)
    for i in range(4):
        for d in range(5):
            assert e[i, d].item() == pytest.approx((s[i, d] - t[i, d]).item() ** 2)
    c = D.cosine_loss(s, t)
    for i in range(4):
        dot = sum(s[i, d].item() * t[i, d].item() for d in range(5))
        ref = 1 - dot / (s[i].norm().item() * t[i].norm().item())
        assert c[i].item() == pytest.approx(ref)
    with pytest.raises(ValueError, match="student shape"):
        D.l2_elements(s, t[:, :3])


def test_hkd_matches_kl_loop():
    s, t, T = _rand(3, 6, seed=3), _rand(3, 6, seed=4), 2.5
    out = D.hkd_loss(s, t, T)
    for i in range(3):
        zs = [math.exp(v / T) for v in s[i].tolist()]
        zt = [math.exp(v / T) for v in t[i].tolist()]
        ps = [z / sum(zs) for z in zs]
        pt = [z / sum(zt) for z in zt]
        kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
        assert out[i].item() == pytest.approx(kl * T * T)
    assert D.hkd_loss(t, t, T).abs().max().item() < 1e-12


def test_attention_and_at():
    fs, ft = _rand(2, 3, 4, 4, seed=5), _rand(2, 5, 4, 4, seed=6)
    a = D.attention_map(ft)
    for b in range(2):
        raw = [sum(ft[b, c, h, w].item() ** 2 for c in range(5)) / 5 for h in range(4) for w in range(4)]
        n = math.sqrt(sum(v * v for v in raw))
        np.testing.assert_allclose(a[b].numpy(), np.array(raw) / n, rtol=1e-10)
    e = D.at_elements(fs, ft)
    np.testing.assert_allclose(e.numpy(), (D.attention_map(fs) - a).pow(2).numpy())
    # authors' code: (at(x) - at(y)).pow(2).mean() == mean over our elements
    assert e.mean().item() == pytest.approx((D.attention_map(fs) - a).pow(2).mean().item())
    # different spatial size: student resized to the teacher's
    assert D.at_elements(_rand(2, 3, 8, 8), ft).shape == (2, 16)


def test_fitnet_hint_is_conv1x1_bn_then_squared_error():
    torch.manual_seed(0)
    hint = D.FitNetHint(3, 2).double().eval()
    with torch.no_grad():
        hint.reg[1].running_mean.copy_(torch.tensor([0.1, -0.2], dtype=torch.float64))
        hint.reg[1].running_var.copy_(torch.tensor([2.0, 0.5], dtype=torch.float64))
    fs, ft = _rand(2, 3, 2, 2, seed=7), _rand(2, 2, 2, 2, seed=8)
    r, e = hint(fs, ft)
    W = hint.reg[0].weight[:, :, 0, 0]
    bn = hint.reg[1]
    for b, o, h, w in itertools.product(range(2), range(2), range(2), range(2)):
        conv = sum(W[o, c].item() * fs[b, c, h, w].item() for c in range(3))
        ref = (conv - bn.running_mean[o].item()) / math.sqrt(bn.running_var[o].item() + bn.eps)
        ref = ref * bn.weight[o].item() + bn.bias[o].item()
        assert r[b, o, h, w].item() == pytest.approx(ref)
        assert e[b, o * 4 + h * 2 + w].item() == pytest.approx((ref - ft[b, o, h, w].item()) ** 2)


def test_rkd_loop_and_batch_mean_equals_authors_formula():
    s, t = _rand(5, 3, seed=9), _rand(5, 4, seed=10)
    B = 5
    out = D.rkd_loss(s, t, w_dist=1.0, w_angle=2.0)

    def psi(x):
        d = [[_dist(x[i], x[j]) for j in range(B)] for i in range(B)]
        mean = sum(d[i][j] for i in range(B) for j in range(B) if i != j) / (B * B - B)
        return [[v / mean for v in row] for row in d]

    def angles(x):
        out = {}
        for i, j, k in itertools.product(range(B), repeat=3):
            u = [a - b for a, b in zip(x[j], x[i])]
            v = [a - b for a, b in zip(x[k], x[i])]
            nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(a * a for a in v))
            out[i, j, k] = 0.0 if nu == 0 or nv == 0 else sum(a * b for a, b in zip(u, v)) / (nu * nv)
        return out

    xs, xt = s.tolist(), t.tolist()
    ds, dt, as_, at = psi(xs), psi(xt), angles(xs), angles(xt)
    for i in range(B):
        dist = sum(_huber(ds[i][j], dt[i][j]) for j in range(B)) / B
        ang = sum(_huber(as_[i, j, k], at[i, j, k]) for j in range(B) for k in range(B)) / B**2
        assert out[i].item() == pytest.approx(dist + 2 * ang, rel=1e-6, abs=1e-9)
    # batch mean == smooth-L1 mean over all B² and B³ entries (the authors' code)
    total_d = sum(_huber(ds[i][j], dt[i][j]) for i in range(B) for j in range(B)) / B**2
    total_a = sum(_huber(as_[k], at[k]) for k in as_) / B**3
    assert out.mean().item() == pytest.approx(total_d + 2 * total_a, rel=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "bilinear"])
def test_cc_loop(kernel):
    s, t, g = _rand(4, 3, seed=11), _rand(4, 6, seed=12), 0.4
    out = D.cc_loss(s, t, kernel=kernel, gamma=g)

    def k(x, i, j):
        if kernel == "gaussian":
            return math.exp(-g * _dist(x[i], x[j]) ** 2)
        return sum(a * b for a, b in zip(x[i], x[j]))

    xs, xt = s.tolist(), t.tolist()
    for i in range(4):
        ref = sum((k(xs, i, j) - k(xt, i, j)) ** 2 for j in range(4)) / 4
        assert out[i].item() == pytest.approx(ref, rel=1e-6, abs=1e-12)
    with pytest.raises(ValueError, match="kernel"):
        D.cc_loss(s, t, kernel="poly")


def test_sp_loop_and_frobenius():
    s, t = _rand(4, 3, seed=13), _rand(4, 5, seed=14)
    out = D.sp_loss(s, t)

    def G(x):
        g = [[sum(a * b for a, b in zip(x[i], x[j])) for j in range(4)] for i in range(4)]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]

    gs, gt = G(s.tolist()), G(t.tolist())
    fro = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(4) for j in range(4))
    for i in range(4):
        assert out[i].item() == pytest.approx(sum((gs[i][j] - gt[i][j]) ** 2 for j in range(4)) / 4)
    assert out.mean().item() == pytest.approx(fro / 16)


def test_pkt_loop():
    s, t = _rand(4, 3, seed=15), _rand(4, 5, seed=16)
    out = D.pkt_loss(s, t, eps=0.0)

    def P(x):
        sim = [
            [
                (
                    sum(a * b for a, b in zip(x[i], x[j]))
                    / (_dist(x[i], [0] * len(x[i])) * _dist(x[j], [0] * len(x[j])))
                    + 1
                )
                / 2
                for j in range(4)
            ]
            for i in range(4)
        ]
        return [[v / sum(row) for v in row] for row in sim]

    ps, pt = P(s.tolist()), P(t.tolist())
    for i in range(4):
        ref = sum(pt[i][j] * math.log(pt[i][j] / ps[i][j]) for j in range(4))
        assert out[i].item() == pytest.approx(ref, rel=1e-6, abs=1e-12)


def test_darkrank_plackett_luce_loop():
    s, t, al, be = _rand(5, 3, seed=17), _rand(5, 4, seed=18), 3.0, 3.0
    out = D.darkrank_loss(s, t, al, be)
    xs, xt = s.tolist(), t.tolist()
    for i in range(5):
        others = [j for j in range(5) if j != i]
        order = sorted(others, key=lambda j: -(-al * _dist(xt[i], xt[j]) ** be))
        S = {j: -al * _dist(xs[i], xs[j]) ** be for j in others}
        nll = 0.0
        for k in range(len(order)):
            nll -= S[order[k]] - math.log(sum(math.exp(S[m]) for m in order[k:]))
        assert out[i].item() == pytest.approx(nll, rel=1e-6)


def test_darkrank_is_a_probability_over_rankings():
    """exp(−loss) summed over every ranking the teacher could give is 1 (Plackett–Luce)."""
    s = _rand(4, 3, seed=19)
    S = [-3.0 * _dist(s[0].tolist(), s[j].tolist()) ** 3 for j in (1, 2, 3)]
    total = 0.0
    for perm in itertools.permutations(range(3)):
        p = 1.0
        for k in range(3):
            p *= math.exp(S[perm[k]]) / sum(math.exp(S[m]) for m in perm[k:])
        total += p
    assert total == pytest.approx(1.0)


def test_vid_loop():
    torch.manual_seed(0)
    vid = D.VIDLoss(3, 2, init_var=5.0).double()
    s, t = _rand(4, 3, seed=20), _rand(4, 2, seed=21)
    out = vid(s, t)
    mu = vid.regressor(s)
    var = vid.variance()
    assert var[0].item() == pytest.approx(5.0, rel=1e-6)
    for i, d in itertools.product(range(4), range(2)):
        v = var[d].item()
        ref = 0.5 * ((t[i, d].item() - mu[i, d].item()) ** 2 / v + math.log(v))
        assert out[i, d].item() == pytest.approx(ref)


def test_relation_losses_zero_when_student_equals_teacher():
    x = _rand(6, 4, seed=22)
    for fn in (D.rkd_loss, D.cc_loss, D.sp_loss, D.pkt_loss):
        assert fn(x, x.clone()).abs().max().item() < 1e-9, fn.__name__


def test_relation_losses_gradients_flow_to_student_only():
    s = _rand(5, 3, seed=24).requires_grad_(True)
    t = _rand(5, 4, seed=25).requires_grad_(True)
    for fn in (D.rkd_loss, D.cc_loss, D.sp_loss, D.pkt_loss, D.darkrank_loss):
        s.grad = None
        t.grad = None
        fn(s, t).sum().backward()
        assert s.grad is not None and torch.isfinite(s.grad).all(), fn.__name__
        assert t.grad is None, fn.__name__
