"""`adadistill`: a margin-softmax loss whose class centres are EMA teacher embeddings.

"AdaDistill: Adaptive Knowledge Distillation for Deep Face Recognition" (Boutros, Štruc, Damer,
ECCV 2024, arXiv 2407.01332). The student is trained with an ArcFace (or CosFace) loss, but the class
centres are not learned: each is an exponential moving average of the teacher's embeddings of its
class, updated from every batch with a per-sample, adaptive momentum

    λ_i = clamp(cos(W_{y_i}, t_i), 1e-6, 1)             (how well the centre already fits the teacher)
    α_i = clamp(cos(s_i, t_i) · λ_i, 1e-6, 1)            (and how close the student already is)
    W_{y_i} ← α_i · W_{y_i} + (1 − α_i) · t̂_i

so that early in training (student far from the teacher, α small) the centres follow the teacher's
embeddings quickly and carry simple class-level knowledge, and later (α near 1) they settle; no
separate distillation term is needed. Loss per sample: CE(s · [cos θ_j; cos(θ_y + m) on the
target], y) with cos θ_j = ŝ·Ŵ_j, s = 64, m = 0.45 (the public configuration).

Why a loss and not a head: the update reads the teacher's embedding of every sample, which a
margin head (`head(embedding, labels)`) never sees; the Distiller sees both networks. Use it with no
`head` (it is the classification loss) and λ = 1; a cached teacher suffices.

Facts from the public code: centres start as N(0, 0.01) and are never trained by the optimiser; the
update happens before the logits are computed, from the normalised embeddings. Deviations: when a
class occurs several times in a batch, its centre becomes the mean of the updates its samples
propose, each computed from the centre before the batch (the public code's indexed assignment keeps
one of them, which one undefined on GPU); under DDP the teacher embeddings, labels and cosines are
gathered from all processes so every replica applies the same update (the public code updates each
GPU's copy with its own batch). The paper's alternative with a fixed momentum is not included (its
public code path does not run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from facekd.dist import all_gather_cat
from facekd.losses.distill.base import DistillLoss, Features, LossContext, register_loss
from facekd.losses.distill.margin import MarginKind, check_labels, margin_logits
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["AdaDistill", "AdaDistillOptions", "adadistill_update"]


def adadistill_update(
    centres: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The updated centres (a new (C, D) tensor): the adaptive EMA of the module doc, a class seen
    several times taking the mean of its samples' proposals. student / teacher (B, D), labels (B,)."""
    s, t = F.normalize(student.to(centres.dtype), dim=1), F.normalize(teacher.to(centres.dtype), dim=1)
    w = centres[labels]
    lam = F.cosine_similarity(w, t, dim=1).clamp(1e-6, 1.0)
    alpha = (F.cosine_similarity(s, t, dim=1).clamp(-1.0, 1.0) * lam).clamp(1e-6, 1.0)[:, None]
    proposal = alpha * w + (1.0 - alpha) * t
    classes, inverse = labels.unique(return_inverse=True)
    sums = torch.zeros(len(classes), centres.shape[1], dtype=proposal.dtype, device=proposal.device)
    counts = torch.bincount(inverse, minlength=len(classes)).to(proposal.dtype)
    out = centres.clone()
    out[classes] = sums.index_add(0, inverse, proposal) / counts[:, None]
    return out


class AdaDistillOptions(OptionsModel):
    scale: float = Field(64.0, gt=0, description="logit scale s")
    margin: float = Field(0.45, ge=0, description="additive angular (arcface) or cosine (cosface) margin m")
    margin_type: MarginKind = "arcface"
    init_std: float = Field(0.01, gt=0, description="std of the centres' N(0, σ²) initialisation")


@register_loss("adadistill")
class AdaDistill(DistillLoss):
    """Per-sample margin-softmax CE (B,) against the EMA teacher class centres (see the module doc).

    Needs the class count (`num_classes`: the Distiller option, which `from_config` fills in).
    Buffer `centres` (C, D_t), saved with the task's checkpoints.
    """

    Options = AdaDistillOptions
    options: AdaDistillOptions
    needs_labels = True
    projects = True
    centres: torch.Tensor

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        _, teacher_dim = ctx.dims(self.name)
        if ctx.num_classes is None or ctx.num_classes < 1:
            raise ValueError(f"loss {self.name!r} needs num_classes (the training set's class count)")
        self.register_buffer("centres", torch.empty(ctx.num_classes, teacher_dim).normal_(0, self.options.init_std))

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        assert student.labels is not None  # the Distiller checks needs_labels
        labels = student.labels
        check_labels(labels, len(self.centres), self.name)
        if self.training:
            with torch.no_grad():
                gathered = [all_gather_cat(x) for x in (student.embedding.detach(), teacher.embedding, labels)]
                self.centres.copy_(adadistill_update(self.centres, *gathered))
        o = self.options
        logits = margin_logits(student.embedding, self.centres, labels, o.margin, o.scale, o.margin_type)
        return [Term(F.cross_entropy(logits, labels, reduction="none"))]
