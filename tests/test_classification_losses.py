"""Classification losses (CE, Focal, Class-Balanced, LDAM) against direct float64 loops."""

import math

import numpy as np
import pytest
import torch

from facekd.losses.classification import class_balanced_weights, get_cls_loss, ldam_margins

C = 5
COUNTS = np.array([100, 30, 7, 1, 12])


def _data(seed=0, b=9):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, C, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, C, (b,), generator=g)
    return logits, labels


def _slow_logp(z, y):
    """log softmax(z)_y by a loop in Python floats."""
    m = max(z)
    return z[y] - (m + math.log(sum(math.exp(v - m) for v in z)))


def test_ce_matches_loop():
    logits, labels = _data()
    out = get_cls_loss("ce")(logits, labels)
    ref = [-_slow_logp(z.tolist(), int(y)) for z, y in zip(logits, labels)]
    assert out.shape == (len(labels),)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_loop(gamma):
    logits, labels = _data(1)
    out = get_cls_loss("focal", gamma=gamma)(logits, labels)
    ref = []
    for z, y in zip(logits.tolist(), labels.tolist()):
        lp = _slow_logp(z, y)
        ref.append(-((1 - math.exp(lp)) ** gamma) * lp)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5)


def test_class_balanced_weights_formula():
    beta = 0.99
    w = class_balanced_weights(COUNTS, beta)
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS.tolist()]
    ref = np.array(raw) * C / sum(raw)
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    assert w.sum() == pytest.approx(C)
    assert w[3] == w.max()  # the rarest class weighs most


def test_class_balanced_zero_count_class():
    w = class_balanced_weights([10, 0, 5], 0.9)
    assert w[1] == 0 and w.sum() == pytest.approx(2)


@pytest.mark.parametrize("base", ["ce", "focal"])
def test_cb_loss_matches_loop(base):
    logits, labels = _data(2)
    beta, gamma = 0.999, 1.5
    out = get_cls_loss("cb", class_counts=COUNTS, beta=beta, base=base, gamma=gamma)(logits, labels)
    w = class_balanced_weights(COUNTS, beta)
    ref = []
    for z, y in zip(logits.tolist(), labels.tolist()):
        lp = _slow_logp(z, y)
        v = -lp if base == "ce" else -((1 - math.exp(lp)) ** gamma) * lp
        ref.append(w[y] * v)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5)


def test_ldam_margins_and_loss_match_loop():
    s, cmax = 16.0, 0.4
    m = ldam_margins(COUNTS, cmax)
    ref_m = np.array([n**-0.25 for n in COUNTS.tolist()])
    ref_m = ref_m * cmax / ref_m.max()
    np.testing.assert_allclose(m, ref_m, rtol=1e-12)
    assert m[3] == pytest.approx(cmax)

    cos = torch.rand(7, C, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 4, 3, 0])
    out = get_cls_loss("ldam", class_counts=COUNTS, s=s, max_margin=cmax)(s * cos, labels)
    ref = []
    for c, y in zip(cos.tolist(), labels.tolist()):
        z = [s * (v - (m[y] if j == y else 0.0)) for j, v in enumerate(c)]
        ref.append(-_slow_logp(z, y))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5)


def test_ldam_gradient_flows_and_reweight():
    logits = torch.randn(4, C, requires_grad=True)
    labels = torch.tensor([0, 1, 3, 3])
    loss_fn = get_cls_loss("ldam", class_counts=COUNTS, s=8.0, reweight_beta=0.99)
    loss_fn(logits, labels).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    plain = get_cls_loss("ldam", class_counts=COUNTS, s=8.0)(logits.detach(), labels)
    w = torch.tensor(class_balanced_weights(COUNTS, 0.99), dtype=torch.float32)
    torch.testing.assert_close(loss_fn(logits.detach(), labels), w[labels] * plain)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown classification loss"):
        get_cls_loss("hinge")
    with pytest.raises(ValueError, match="class_counts"):
        get_cls_loss("cb")
    with pytest.raises(ValueError, match="negative"):
        get_cls_loss("ldam", class_counts=[3, -1])
    with pytest.raises(ValueError, match="beta"):
        get_cls_loss("cb", class_counts=[3, 1], beta=1.0)
    with pytest.raises(ValueError, match="labels"):
        get_cls_loss("ce")(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="classes"):
        get_cls_loss("cb", class_counts=[3, 1])(torch.zeros(2, 3), torch.tensor([0, 1]))
