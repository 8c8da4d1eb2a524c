"""MarginDistillation ("MarginDistillation: distillation for margin-based softmax") against a direct,
slow implementation: per-sample margins from the teacher's angle to its class centre, ArcFace on
the teacher's frozen centres; and how the centres are given."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.losses.distiller import Distiller, Features

torch.set_num_threads(1)


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _slow_margin_distillation(W, s, t, y, scale, m_min, m_max):
    c = [max(0.0, _dot(_unit(ti), _unit(W[k]))) for ti, k in zip(t, y)]
    margins = [(m_max - m_min) * ci / max(c) + m_min for ci in c]
    out = []
    for si, k, m in zip(s, y, margins):
        cos = [_dot(_unit(si), _unit(w)) for w in W]
        logits = [scale * (math.cos(math.acos(cos[k]) + m) if j == k else v) for j, v in enumerate(cos)]
        top = max(logits)
        out.append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[k])
    return out, margins


def test_margin_distillation_matches_loop():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, generator=g, dtype=torch.float64)
    s = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 5, 3, 2, 0])
    t = W[y] + 0.8 * torch.randn(7, 4, generator=g, dtype=torch.float64)  # a teacher near its centres
    t[3] = -W[5]  # one sample the teacher gets wrong: margin m_min
    d = Distiller("margin_distillation", class_centres=W, student_dim=4, teacher_dim=4, scale=16, m_max=0.6).double()
    loss, _ = d(Features(s, labels=y), Features(t))
    ref, margins = _slow_margin_distillation(W.tolist(), s.tolist(), t.tolist(), y.tolist(), 16.0, 0.2, 0.6)
    assert margins[3] == pytest.approx(0.2) and max(margins) == pytest.approx(0.6)
    assert d.per_sample_stats["gap"].tolist() == pytest.approx(ref, rel=1e-9)
    assert loss.item() == pytest.approx(sum(ref) / 7, rel=1e-9)


def test_centres_from_files_projection_and_errors(tmp_path):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 6, generator=g)
    torch.save({"weight": W}, tmp_path / "head.pth")  # a teacher head's state_dict
    torch.save(W, tmp_path / "centres.pt")
    s = torch.randn(4, 3, generator=g, requires_grad=True)
    t, y = torch.randn(4, 6, generator=g), torch.tensor([0, 4, 2, 2])
    losses = []
    for source in (tmp_path / "head.pth", str(tmp_path / "centres.pt"), W):
        torch.manual_seed(0)  # the same projection each time
        d = Distiller.from_config({"loss": "margin_distillation"}, 3, 6, class_centres=source)
        assert torch.equal(d.loss.centres, W) and "loss.centres" not in d.state_dict()  # from the teacher, not saved
        losses.append(d(Features(s, labels=y), Features(t))[0])
    assert losses[0].item() == losses[1].item() == losses[2].item()
    losses[0].backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs class_centres"):
        Distiller("margin_distillation", student_dim=3, teacher_dim=6)
    with pytest.raises(ValueError, match="6-d"):
        Distiller("margin_distillation", class_centres=W, student_dim=3, teacher_dim=8)
    with pytest.raises(ValueError, match="m_min"):
        Distiller("margin_distillation", class_centres=W, student_dim=6, teacher_dim=6, m_min=0.6, m_max=0.5)
    torch.save({"state": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        Distiller("margin_distillation", class_centres=str(tmp_path / "bad.pt"), student_dim=6, teacher_dim=6)
