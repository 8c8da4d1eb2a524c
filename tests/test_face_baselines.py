"""The four face-specific baselines train a student: a few SGD steps on clustered toy data lower
each loss, through the Distiller, with its buffers (anchors, centres) moving as they should."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facekd.losses.distiller import Distiller, Features

torch.set_num_threads(1)


def _data(n=64, classes=8, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 3 * torch.randn(classes, dim, generator=g)[y] + torch.randn(n, dim, generator=g)
    teacher = nn.Linear(dim, 12)
    head_t = nn.Linear(12, classes)
    with torch.no_grad():
        t = teacher(x)
    return x, y, t, head_t(t).detach()


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ekd", "gkd", "adadistill", "margin_distillation"])
def test_baseline_loss_decreases_when_training_a_student(loss):
    torch.manual_seed(0)
    x, y, t, t_logits = _data()
    student, head_s = nn.Linear(6, 12), nn.Linear(12, 8)
    context = {"num_classes": 8, "class_centres": torch.randn(8, 12)}
    options = {"top_k": 200, "rank_temperature": 0.1, "anchor_momentum": 1.0} if loss == "ekd" else {}
    d = Distiller.from_config({"loss": loss, "options": options}, 12, 12, **context)
    params = [*student.parameters(), *head_s.parameters(), *d.parameters()]
    opt = torch.optim.SGD(params, lr=0.002 if loss == "gkd" else 0.05, momentum=0.9)  # GKD: T² = 16 on raw logits
    before = {k: v.clone() for k, v in d.loss.state_dict().items()}
    history = []
    for _ in range(60):
        s = student(x)
        value, _ = d(Features(s, logits=head_s(s), labels=y), Features(t, logits=t_logits))
        opt.zero_grad()
        value.backward()
        opt.step()
        history.append(value.item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-5:]) / 5 < 0.8 * sum(history[:5]) / 5, history[::10]
    moved = [k for k, v in d.loss.state_dict().items() if not torch.equal(v, before[k])]
    assert moved == {"ekd": ["student_anchors", "teacher_anchors"], "adadistill": ["centres"]}.get(loss, [])
