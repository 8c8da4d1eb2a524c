"""`hkd`: Hinton's soft-target distillation on class logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from facekd.losses.distill.base import DistillLoss, Features, check_pair, register_loss
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["HKDDistill", "HKDOptions", "hkd_loss", "logit_pair"]


def hkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    """Hinton KD ("Distilling the Knowledge in a Neural Network", Hinton et al. 2015, arXiv 1503.02531):
    T² · KL(softmax(t/T) ‖ softmax(s/T)) per sample, (B, C) → (B,).

    The T² factor keeps the gradient scale independent of T (as in the paper).
    """
    check_pair(student_logits, teacher_logits, "hkd")
    if T <= 0:
        raise ValueError(f"hkd: temperature T must be > 0, got {T}")
    log_ps = F.log_softmax(student_logits / T, dim=1)
    log_pt = F.log_softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=1) * (T * T)


def logit_pair(name: str, student: Features, teacher: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """(student logits, detached teacher logits); ValueError when either network gave none."""
    if student.logits is None or teacher.logits is None:
        raise ValueError(f"loss {name!r} needs class logits in both Features (Features.logits)")
    return student.logits, teacher.logits.detach()


class HKDOptions(OptionsModel):
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")


@register_loss("hkd")
class HKDDistill(DistillLoss):
    """Per-sample T² · KL(p_t ‖ p_s) on the logits of both networks' heads (B,)."""

    reads = "logits"
    Options = HKDOptions
    options: HKDOptions

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        s, t = logit_pair(self.name, student, teacher)
        return [Term(hkd_loss(s, t, self.options.temperature))]
