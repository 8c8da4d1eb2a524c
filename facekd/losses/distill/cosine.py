"""`cosine`: cosine distance between the (projected) student and teacher embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facekd.losses.distill.base import DistillLoss, Features, check_pair, register_loss
from facekd.losses.weighting import Term

__all__ = ["CosineDistill", "cosine_loss"]


def cosine_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cosine distance per sample: (B, D), (B, D) → (B,) = 1 − cos(s, t) ∈ [0, 2]."""
    check_pair(s, t, "cosine")
    return 1.0 - F.cosine_similarity(s, t, dim=1)


@register_loss("cosine")
class CosineDistill(DistillLoss):
    """Per-sample 1 − cos(s, t) on the embedding (B,)."""

    projects = True

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        return [Term(cosine_loss(student.embedding, teacher.embedding))]
