"""`gkd`: grouped knowledge distillation of the margin head's logits.

"Grouped Knowledge Distillation for Deep Face Recognition" (Zhao, Zhu, Guo, Zhang, Lei, AAAI 2023,
arXiv 2304.04462). With tens of thousands of identities, most of a face teacher's softened
prediction is a tail of near-zero probabilities that a small student cannot fit. GKD splits the
classes into a **primary group** (the target and the most probable classes) and a **secondary
group** (the rest), and rewrites KD as Primary-KD (KL between the teacher's and the student's
distributions *within* the primary group), Secondary-KD (the same within the secondary group) and
Binary-KD (KL between the two-bin distributions [mass of primary, mass of secondary]). It keeps
Primary-KD and Binary-KD and drops Secondary-KD.

What this file computes (matched to the authors' public code):

- group size K: the smallest K such that the K classes with the largest batch-summed probability
  Σ_i softmax(z_i) (temperature 1, of the `group_by` network, default the student) hold a fraction
  `threshold` (0.93) of the batch's total mass; or a fixed `primary_classes`;
- primary group of sample i: its target class and the K − 1 other classes with the largest
  `group_by` logits; the secondary group is the rest;
- with p = softmax(z / T) (T = 4):
  L_i = T² · [w_binary · KL(b_t ‖ b_s) + w_primary · KL(p_t|P ‖ p_s|P) + w_secondary · KL(p_t|S ‖ p_s|S)],
  b = (p(P), p(S)), p|G = p restricted to G and renormalised; defaults 1, 4, 0 (Secondary-KD off).

The batch mean of L_i is the public code's loss (its KL sums divided by the batch size). Deviations
and uncertainties: the public code searches K in steps of 100 classes (we take the exact smallest
K) and applies the groups with a −1000 logit offset (we mask exactly); whether the paper groups by
the student's or the teacher's prediction is not certain — the public training class groups by the
student's, `group_by: teacher` is the alternative it also ships. Both networks' logits come from
their margin heads (the task's student head, and the teacher's head for an online teacher).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from facekd.losses.distill.base import DistillLoss, Features, check_pair, register_loss
from facekd.losses.distill.hkd import logit_pair
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["GKDDistill", "GKDOptions", "gkd_group_size", "gkd_loss", "gkd_primary_mask"]


def gkd_group_size(logits: torch.Tensor, threshold: float) -> int:
    """Smallest K whose K most probable classes (by batch-summed softmax at T = 1) hold `threshold`
    of the batch's probability mass. logits (B, C) → K in [1, C]."""
    mass = F.softmax(logits.detach().double(), dim=1).sum(dim=0).sort(descending=True).values.cumsum(0)
    return min(int((mass < threshold * logits.shape[0]).sum()) + 1, logits.shape[1])


def gkd_primary_mask(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C) bool: the target class and the k − 1 other classes with the largest logits."""
    z = logits.detach().scatter(1, labels[:, None], float("inf"))
    return torch.zeros_like(z, dtype=torch.bool).scatter(1, z.topk(k, dim=1).indices, True)


def _group_kl(log_pt: torch.Tensor, log_ps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_t|G ‖ p_s|G) per row for the group `mask` (B, C): both distributions restricted to the
    group and renormalised. 0 for an empty group."""
    low = torch.finfo(log_pt.dtype).min
    lt = log_pt.masked_fill(~mask, low)
    ls = log_ps.masked_fill(~mask, low)
    lt = lt - torch.logsumexp(lt, dim=1, keepdim=True)
    ls = ls - torch.logsumexp(ls, dim=1, keepdim=True)
    return torch.where(mask, lt.exp() * (lt - ls), torch.zeros_like(lt)).sum(dim=1)


def _binary_kl(log_pt: torch.Tensor, log_ps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL between the two-bin distributions (mass of the group, mass of the rest) per row."""
    low = torch.finfo(log_pt.dtype).min

    def bins(lp: torch.Tensor) -> torch.Tensor:
        return torch.stack([lp.masked_fill(~mask, low).logsumexp(1), lp.masked_fill(mask, low).logsumexp(1)], 1)

    bt, bs = bins(log_pt), bins(log_ps)
    return (bt.exp() * (bt - bs)).sum(dim=1)


def gkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    threshold: float = 0.93,
    primary_classes: int | None = None,
    group_by: str = "student",
    weights: tuple[float, float, float] = (1.0, 4.0, 0.0),
) -> torch.Tensor:
    """GKD per sample (see the module doc): (B, C), (B, C), (B,) → (B,).

    weights = (w_binary, w_primary, w_secondary).
    """
    check_pair(student_logits, teacher_logits, "gkd")
    grouping = student_logits if group_by == "student" else teacher_logits
    k = primary_classes if primary_classes is not None else gkd_group_size(grouping, threshold)
    mask = gkd_primary_mask(grouping, labels, min(k, grouping.shape[1]))
    T = temperature
    log_ps = F.log_softmax(student_logits / T, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach() / T, dim=1)
    w_bin, w_pri, w_sec = weights
    out = w_bin * _binary_kl(log_pt, log_ps, mask) + w_pri * _group_kl(log_pt, log_ps, mask)
    if w_sec:
        out = out + w_sec * _group_kl(log_pt, log_ps, ~mask)
    return out * (T * T)


class GKDOptions(OptionsModel):
    temperature: float = Field(4.0, gt=0, description="softmax temperature T of the distilled distributions")
    threshold: float = Field(0.93, gt=0, le=1, description="probability mass that sizes the primary group")
    primary_classes: int | None = Field(None, ge=1, description="a fixed primary-group size instead")
    group_by: Literal["student", "teacher"] = "student"
    w_binary: float = Field(1.0, ge=0, description="weight of Binary-KD")
    w_primary: float = Field(4.0, ge=0, description="weight of Primary-KD")
    w_secondary: float = Field(0.0, ge=0, description="weight of Secondary-KD (GKD drops it)")


@register_loss("gkd")
class GKDDistill(DistillLoss):
    """Per-sample GKD (B,) on the logits of both networks' margin heads (see the module doc)."""

    Options = GKDOptions
    options: GKDOptions
    reads = "logits"
    needs_labels = True

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        assert student.labels is not None  # the Distiller checks needs_labels
        o = self.options
        s, t = logit_pair(self.name, student, teacher)
        weights = (o.w_binary, o.w_primary, o.w_secondary)
        values = gkd_loss(s, t, student.labels, o.temperature, o.threshold, o.primary_classes, o.group_by, weights)
        return [Term(values)]
