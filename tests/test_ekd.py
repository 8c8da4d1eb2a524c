"""EKD ("Evaluation-oriented Knowledge Distillation for Deep Face Recognition") against a direct,
slow implementation: pairs, FPR-anchor thresholds and their moving average, critical pairs, the
sigmoid rank counts and the per-sample shares."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.losses.distiller import Distiller, Features

torch.set_num_threads(1)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _slow_ekd(s, t, y, anchors, fprs, tau=0.01, mu=0.01, top_k=2000, w_pos=0.02, w_neg=0.01):
    """(per-sample values, updated (student, teacher) anchors), written with loops and floats."""
    B = len(y)
    pairs = [(i, j) for i in range(B) for j in range(i + 1, B)]
    S = {p: _cos(s[p[0]], s[p[1]]) for p in pairs}
    T = {p: _cos(t[p[0]], t[p[1]]) for p in pairs}
    pos = [p for p in pairs if y[p[0]] == y[p[1]]]
    neg = [p for p in pairs if y[p[0]] != y[p[1]]]
    new = []
    for sims, old in ((S, anchors[0]), (T, anchors[1])):
        ranked = sorted((sims[p] for p in neg), reverse=True)
        thr = [ranked[len(neg) // round(1 / f)] for f in fprs]
        new.append([mu * a + (1 - mu) * b for a, b in zip(thr, old)])
    hard = sorted(neg, key=lambda p: -S[p])[:top_k]

    def rank(x, a):
        return sum(1 / (1 + math.exp(-max(-50.0, min(50.0, (x - ak) / tau)))) for ak in a)

    per = [0.0] * B
    for group, w in ((pos, w_pos), (hard, w_neg)):
        for i, j in group:
            share = (rank(S[i, j], new[0]) - rank(T[i, j], new[1])) ** 2 * w * B / (2 * len(group))
            per[i] += share
            per[j] += share
    return per, new


def test_ekd_matches_loop_over_two_steps_with_moving_anchors():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0])
    fprs = [0.5, 0.1, 0.01]
    d = Distiller("ekd", fpr_anchors=fprs, top_k=7, rank_temperature=0.05, anchor_momentum=0.3).double()
    anchors = [[0.0] * 3, [0.0] * 3]
    for _ in range(2):  # the second step uses the anchors the first one moved
        s = torch.randn(9, 4, generator=g, dtype=torch.float64)
        t = torch.randn(9, 6, generator=g, dtype=torch.float64)
        loss, _ = d(Features(s, labels=y), Features(t))
        per, anchors = _slow_ekd(s.tolist(), t.tolist(), y.tolist(), anchors, fprs, 0.05, 0.3, 7)
        assert d.loss.student_anchors.tolist() == pytest.approx(anchors[0], rel=1e-12)
        assert d.loss.teacher_anchors.tolist() == pytest.approx(anchors[1], rel=1e-12)
        assert d.per_sample_stats["gap"].tolist() == pytest.approx(per, rel=1e-9, abs=1e-15)
        assert loss.item() == pytest.approx(sum(per) / 9, rel=1e-9)  # uniform: mean of the shares


def test_ekd_defaults_gradient_and_eval_mode():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(32) % 8
    s = torch.randn(32, 8, generator=g, requires_grad=True)
    t = torch.randn(32, 16, generator=g)
    d = Distiller.from_config({"loss": "ekd", "lambda": 1.0}, 8, 16)
    loss, _ = d(Features(s, labels=y), Features(t))
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    fresh = Distiller.from_config({"loss": "ekd"}, 16, 16)
    same, _ = fresh(Features(t, labels=y), Features(t))
    assert same.item() == pytest.approx(0.0, abs=1e-9)  # identical networks: identical anchors and ranks
    before = d.loss.student_anchors.clone()
    d.eval()(Features(s, labels=y), Features(t))
    assert torch.equal(d.loss.student_anchors, before)  # thresholds move only in training
    with pytest.raises(ValueError, match="needs the batch labels"):
        d(Features(s), Features(t))
    with pytest.raises(ValueError, match="fpr_anchors"):
        Distiller("ekd", fpr_anchors=[0.1, 1.5])
