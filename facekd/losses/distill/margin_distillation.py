"""`margin_distillation`: ArcFace on the teacher's class centres with teacher-informed margins.

"MarginDistillation: distillation for margin-based softmax" (Svitov, Alyamkin, 2020, arXiv
2003.02586). The student inherits the teacher's class centres W (frozen) and is trained with an
ArcFace loss whose margin is set, per sample, by how close the *teacher's* embedding t_i lies to its
class centre:

    c_i = cos(t_i, W_{y_i}),   m_i = (m_max − m_min) · c_i / max_j c_j + m_min

so samples the teacher places confidently get the full margin m_max and hard ones a smaller margin
(down to m_min), and the student learns the teacher's angles to the centres. Loss per sample:
CE(s · [cos θ_j; cos(θ_y + m_i) on the target], y), s = 64, m_min = 0.2, m_max = 0.5 (the public
configuration; max_j over the batch).

Why a loss and not a head: the margins read the teacher's embedding of each sample, which a margin
head (`head(embedding, labels)`) never sees. Use it with no `head` and λ = 1; a cached teacher
suffices (the public code also reads precomputed teacher embeddings).

The centres (`class_centres`: a (C, D) tensor or a file with one, e.g. the teacher's head.pth; for
insightface PartialFC shards, `facekd.models.checkpoint.merge_class_centres` first) are a buffer
that is not saved in checkpoints: they come from the teacher each time the Distiller is built.
Deviation: c_i is clamped at 0 and max_j c_j at 1e-12 (the public formula gives margins below m_min,
or divides by a non-positive maximum, when the teacher's embedding points away from its centre).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from facekd.losses.distill.base import DistillLoss, Features, LossContext, register_loss
from facekd.losses.distill.margin import check_labels, load_class_centres, margin_logits
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["MarginDistillation", "MarginDistillationOptions", "teacher_margins"]


def teacher_margins(teacher: torch.Tensor, centres: torch.Tensor, m_min: float, m_max: float) -> torch.Tensor:
    """Per-sample margins (B,) from the teacher embeddings (B, D) and their class centres (B, D)."""
    c = F.cosine_similarity(teacher.to(centres.dtype), centres, dim=1).clamp(min=0.0)
    return (m_max - m_min) * c / c.max().clamp(min=1e-12) + m_min


class MarginDistillationOptions(OptionsModel):
    scale: float = Field(64.0, gt=0, description="logit scale s")
    m_min: float = Field(0.2, ge=0, description="margin of the sample the teacher fits worst")
    m_max: float = Field(0.5, ge=0, description="margin of the sample the teacher fits best")

    @model_validator(mode="after")
    def _ordered(self) -> MarginDistillationOptions:
        if self.m_min > self.m_max:
            raise ValueError(f"m_min ({self.m_min}) must not exceed m_max ({self.m_max})")
        return self


@register_loss("margin_distillation")
class MarginDistillation(DistillLoss):
    """Per-sample ArcFace CE (B,) on the teacher's frozen centres with margins from the teacher.

    Needs the teacher's class centres (`class_centres`: the Distiller option, which `from_config`
    fills in), of the teacher's embedding width.
    """

    Options = MarginDistillationOptions
    options: MarginDistillationOptions
    needs_labels = True
    projects = True
    centres: torch.Tensor

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        _, teacher_dim = ctx.dims(self.name)
        if ctx.class_centres is None:
            raise ValueError(f"loss {self.name!r} needs class_centres (the teacher's (C, D) class centres)")
        centres = load_class_centres(ctx.class_centres, self.name)
        if centres.shape[1] != teacher_dim:
            raise ValueError(
                f"{self.name}: class centres are {centres.shape[1]}-d, the teacher embedding {teacher_dim}-d"
            )
        self.register_buffer("centres", centres, persistent=False)

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        assert student.labels is not None  # the Distiller checks needs_labels
        labels, o = student.labels, self.options
        check_labels(labels, len(self.centres), self.name)
        with torch.no_grad():
            margins = teacher_margins(teacher.embedding, self.centres[labels], o.m_min, o.m_max)
        logits = margin_logits(student.embedding, self.centres, labels, margins, o.scale, "arcface")
        return [Term(F.cross_entropy(logits, labels, reduction="none"))]
