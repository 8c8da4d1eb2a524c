"""`sp`: similarity-preserving distillation of the batch's Gram matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facekd.losses.distill.base import DistillLoss, Features, register_loss
from facekd.losses.weighting import Term

__all__ = ["SPDistill", "sp_loss"]


def sp_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD ("Similarity-Preserving Knowledge Distillation", Tung & Mori 2019,
    arXiv 1907.09682), per anchor: (B, Ds), (B, Dt) → (B,).

    G = row-L2-normalised (X Xᵀ); loss = ‖G_s − G_t‖²_F / B²; sample i's value is its row sum / B.
    """
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"sp: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")
    s, t = s.flatten(1), t.flatten(1)
    gs = F.normalize(s @ s.t(), dim=1)
    with torch.no_grad():
        gt = F.normalize(t @ t.t(), dim=1)
    return (gs - gt).pow(2).sum(dim=1) / s.shape[0]


@register_loss("sp")
class SPDistill(DistillLoss):
    """Per-anchor similarity preservation (B,) on the compared embeddings."""

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        return [Term(sp_loss(student.embedding, teacher.embedding))]
