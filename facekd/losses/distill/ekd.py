"""`ekd`: evaluation-oriented distillation of the critical pairs at the FPR anchors.

"Evaluation-oriented Knowledge Distillation for Deep Face Recognition" (Huang, Wu, Xu, Ding,
CVPR 2022, arXiv 2206.02325). Face verification is judged by TPR at fixed FPRs; EKD distils exactly
that: within the batch, the pair similarities of each network are placed against that network's
similarity thresholds at the FPR anchors, and the student is asked to rank each critical pair
against its thresholds as the teacher ranks it against its own — not to reproduce the teacher's
similarities one to one, which gives a low-capacity student room.

What this file computes (our reading of the paper, matched to the authors' public code in TFace):

1. cosine similarities S = x̂ x̂ᵀ of each network's embeddings; pairs i < j; positive when the labels
   agree, negative otherwise;
2. thresholds at the FPR anchors f_k (default 1e-1 … 1e-6): the negative similarity of rank
   ⌊n_neg / round(1/f_k)⌋ (0-based, descending) of each network, kept as an exponential moving average
   a_k ← μ·threshold_k + (1 − μ)·a_k (μ = 0.01, a_k starts at 0; updated in training mode only);
3. critical pairs: every positive pair (the TPR side) and the `top_k` negatives with the largest
   *student* similarity (the FPR side);
4. rank of a pair = Σ_k σ((S_ij − a_k) / τ) (a soft count of the thresholds it passes, τ = 0.01);
   loss = w_pos · mean_pos (r_s − r_t)² + w_neg · mean_neg (r_s − r_t)², w_pos = 0.02, w_neg = 0.01.

The per-sample value given to the weighting splits each pair's share of the loss equally between its
two samples (× B), so the batch mean of the (B,) values is the loss above. Uncertainties: the paper's
exact selection of critical pairs and its weights are taken from the public code; pairs are formed
within each process's batch (the public code first gathers the embeddings of all GPUs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from facekd.losses.distill.base import DistillLoss, Features, LossContext, register_loss
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["EKDDistill", "EKDOptions", "ekd_rank", "ekd_thresholds"]


def ekd_thresholds(neg_sims: torch.Tensor, fprs: list[float]) -> torch.Tensor:
    """Similarity thresholds at the FPR anchors (K,): for each f_k, the negative-pair similarity of
    0-based rank ⌊n / round(1/f_k)⌋ in descending order (the public code's `length // anchor`).
    neg_sims (n,) with n ≥ 1; fprs in (0, 1)."""
    ranked = neg_sims.sort(descending=True).values
    return ranked[[len(ranked) // max(1, round(1.0 / f)) for f in fprs]]


def ekd_rank(sims: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft count of the anchors each similarity passes: Σ_k σ((s − a_k) / τ); (n,), (K,) → (n,).
    The logit is clamped to ±50 as in the public code."""
    return torch.sigmoid(((sims[:, None] - anchors[None, :]) / temperature).clamp(-50.0, 50.0)).sum(dim=1)


class EKDOptions(OptionsModel):
    fpr_anchors: list[float] = Field(
        default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6], description="FPRs of the thresholds"
    )
    rank_temperature: float = Field(0.01, gt=0, description="τ of the sigmoid soft count")
    anchor_momentum: float = Field(0.01, gt=0, le=1, description="μ of the thresholds' moving average")
    top_k: int = Field(2000, ge=1, description="hardest negative pairs (by student similarity) distilled")
    w_pos: float = Field(0.02, ge=0, description="weight of the positive-pair (TPR) term")
    w_neg: float = Field(0.01, ge=0, description="weight of the negative-pair (FPR) term")


@register_loss("ekd")
class EKDDistill(DistillLoss):
    """Per-sample share (B,) of EKD's rank loss on the critical pairs (see the module doc).

    Buffers: `student_anchors`, `teacher_anchors` (K,), the moving-average thresholds.
    """

    Options = EKDOptions
    options: EKDOptions
    needs_labels = True
    student_anchors: torch.Tensor
    teacher_anchors: torch.Tensor

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        fprs = self.options.fpr_anchors
        if not fprs or not all(0.0 < f < 1.0 for f in fprs):
            raise ValueError(f"ekd: fpr_anchors must be a non-empty list of FPRs in (0, 1), got {fprs}")
        self.register_buffer("student_anchors", torch.zeros(len(fprs)))
        self.register_buffer("teacher_anchors", torch.zeros(len(fprs)))

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        assert student.labels is not None  # the Distiller checks needs_labels
        o, y, B = self.options, student.labels, len(student.labels)
        i, j = torch.triu_indices(B, B, offset=1, device=y.device)
        positive = y[i] == y[j]
        s = F.normalize(student.embedding, dim=1)
        s_sim = (s @ s.t())[i, j]
        with torch.no_grad():
            t = F.normalize(teacher.embedding.detach(), dim=1)
            t_sim = (t @ t.t())[i, j]
            neg = (~positive).nonzero().squeeze(1)
            if self.training and len(neg) > 0:
                mu = o.anchor_momentum
                s_thr = ekd_thresholds(s_sim.detach()[neg], o.fpr_anchors)
                t_thr = ekd_thresholds(t_sim[neg], o.fpr_anchors)
                self.student_anchors.copy_(mu * s_thr + (1.0 - mu) * self.student_anchors)
                self.teacher_anchors.copy_(mu * t_thr + (1.0 - mu) * self.teacher_anchors)
            hard = neg[s_sim.detach()[neg].argsort(descending=True)[: o.top_k]]
        per_sample = s_sim.new_zeros(B)
        for pairs, weight in ((positive.nonzero().squeeze(1), o.w_pos), (hard, o.w_neg)):
            if len(pairs) == 0 or weight == 0:
                continue
            r_s = ekd_rank(s_sim[pairs], self.student_anchors, o.rank_temperature)
            r_t = ekd_rank(t_sim[pairs], self.teacher_anchors, o.rank_temperature)
            share = (r_s - r_t).pow(2) * (weight * B / (2 * len(pairs)))
            per_sample = per_sample.index_add(0, i[pairs], share).index_add(0, j[pairs], share)
        return [Term(per_sample)]
