"""`l2`: squared error between the (projected, normalised) student and teacher embeddings."""

from __future__ import annotations

import torch

from facekd.losses.distill.base import DistillLoss, Features, LossContext, check_pair, register_loss
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["L2Distill", "l2_elements"]


def l2_elements(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Squared error per sample and dimension: (B, D), (B, D) → (B, D) = (s - t)²."""
    check_pair(s, t, "l2")
    return (s - t).pow(2)


@register_loss("l2")
class L2Distill(DistillLoss):
    """Elementwise (s − t)² on the embedding (B, D_t): the data-bias KD baseline and PAD's Sec. 3.1
    loss. With PAD, a `VarianceBranch` (FC + BN) reads the compared student embedding."""

    pad_compatible = True
    projects = True

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        _, teacher_dim = ctx.dims(self.name)
        self.pad = ctx.pad
        self.branch = ctx.pad.add_linear(teacher_dim) if ctx.pad is not None else -1

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        s, t = student.embedding, teacher.embedding
        logvar = self.pad.logvar(self.branch, s) if self.pad is not None else None
        return [Term(l2_elements(s, t), None, logvar)]
