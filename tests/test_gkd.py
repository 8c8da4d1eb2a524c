"""GKD ("Grouped Knowledge Distillation for Deep Face Recognition") against a direct, slow
implementation: group size from the cumulative probability, primary groups with the target,
Binary-, Primary- and Secondary-KD."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.losses.distill.gkd import gkd_group_size, gkd_loss
from facekd.losses.distiller import Distiller, Features

torch.set_num_threads(1)


def _softmax(z, T=1.0):
    m = max(z)
    e = [math.exp((v - m) / T) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _slow_gkd(zs, zt, y, T, threshold, k=None, by="student", w=(1.0, 4.0, 0.0)):
    B, C = len(zs), len(zs[0])
    g = zs if by == "student" else zt
    if k is None:
        mass = [sum(_softmax(g[i])[c] for i in range(B)) for c in range(C)]
        cum, k = 0.0, C
        for n, v in enumerate(sorted(mass, reverse=True), start=1):
            cum += v
            if cum >= threshold * B:
                k = n
                break
    out = []
    for i in range(B):
        others = sorted((c for c in range(C) if c != y[i]), key=lambda c: -g[i][c])
        P = [y[i], *others[: k - 1]]
        S = [c for c in range(C) if c not in P]
        ps, pt = _softmax(zs[i], T), _softmax(zt[i], T)
        bs, bt = sum(ps[c] for c in P), sum(pt[c] for c in P)
        binary = _kl([bt, 1 - bt], [bs, 1 - bs])
        primary = _kl([pt[c] / bt for c in P], [ps[c] / bs for c in P])
        secondary = _kl([pt[c] / (1 - bt) for c in S], [ps[c] / (1 - bs) for c in S]) if S else 0.0
        out.append(T * T * (w[0] * binary + w[1] * primary + w[2] * secondary))
    return out, k


@pytest.mark.parametrize(
    "threshold,k,by,w",
    [(0.6, None, "student", (1.0, 4.0, 0.0)), (0.8, None, "teacher", (0.5, 2.0, 1.0)), (None, 4, "student", (1, 1, 1))],
)
def test_gkd_matches_loop(threshold, k, by, w):
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3
    zt = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 3, 3, 9, 5, 1])
    out = gkd_loss(zs, zt, y, 2.0, threshold or 0.93, k, by, w)
    ref, k_ref = _slow_gkd(zs.tolist(), zt.tolist(), y.tolist(), 2.0, threshold or 0.93, k, by, w)
    assert out.tolist() == pytest.approx(ref, rel=1e-9)
    if k is None:
        assert gkd_group_size(zs if by == "student" else zt, threshold) == k_ref


def test_gkd_through_the_distiller_with_options_and_gradients():
    g = torch.Generator().manual_seed(1)
    zs = (torch.randn(8, 12, generator=g) * 4).requires_grad_(True)
    zt = torch.randn(8, 12, generator=g) * 4
    y = torch.randint(0, 12, (8,), generator=g)
    cfg = {"loss": "gkd", "lambda": 2.0, "options": {"temperature": 4, "w_primary": 8, "threshold": 0.9}}
    d = Distiller.from_config(cfg)
    assert d.needs_logits and d.needs_labels
    loss, _ = d(Features(torch.zeros(8, 2), logits=zs, labels=y), Features(torch.zeros(8, 2), logits=zt))
    ref, _ = _slow_gkd(zs.tolist(), zt.tolist(), y.tolist(), 4.0, 0.9, w=(1.0, 8.0, 0.0))
    assert loss.item() == pytest.approx(2.0 * sum(ref) / 8, rel=1e-5)
    loss.backward()
    assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0
    # one group holding every class: Binary-KD and Secondary-KD vanish, Primary-KD is plain KD
    full = gkd_loss(zs, zt, y, 4.0, primary_classes=12, weights=(1.0, 1.0, 1.0))
    kd = torch.nn.functional.kl_div(
        torch.log_softmax(zs / 4, 1), torch.log_softmax(zt / 4, 1), reduction="none", log_target=True
    ).sum(1)
    torch.testing.assert_close(full, 16 * kd)
    full.sum().backward()
    assert torch.isfinite(zs.grad).all()
    with pytest.raises(ValueError, match="logits"):
        d(Features(torch.zeros(8, 2), labels=y), Features(torch.zeros(8, 2)))
