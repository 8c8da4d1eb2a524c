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
    loss. With PAD, a `VarianceBranch` (FC + BN) reads the backbone feature beside the student's
    embedding layer (`Features.backbone`), or the compared embedding (`branch_input: regressed`)."""

    pad_compatible = True
    projects = True

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        _, teacher_dim = ctx.dims(self.name)
        self.pad = ctx.pad
        self.branch = -1
        if ctx.pad is not None:
            self.branch = ctx.pad.add_linear(ctx.pad.embedding_input_dim(teacher_dim), teacher_dim)

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        s, t = student.embedding, teacher.embedding
        logvar = None
        if self.pad is not None:
            x = student.backbone if self.pad.reads_backbone else s
            if x is None:
                raise ValueError("PAD on l2 reads Features.backbone (the input of the student's embedding layer)")
            logvar = self.pad.logvar(self.branch, x.flatten(1))
        return [Term(l2_elements(s, t), None, logvar)]
