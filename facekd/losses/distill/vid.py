"""`vid`: variational information distillation on the embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from facekd.losses.distill.base import DistillLoss, Features, LossContext, check_pair, register_loss
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["VIDDistill", "VIDLoss", "VIDOptions"]


class VIDLoss(nn.Module):
    """Variational information distillation ("Variational Information Distillation for Knowledge
    Transfer", Ahn et al. 2019, arXiv 1904.05835) on embeddings, elementwise (B, D_t).

    A regressor μ(s) (Linear–ReLU–Linear–ReLU–Linear, hidden width D_t, as the 1×1-conv regressor of
    the verified RepDistiller code) and a learned per-dimension variance σ²_d = softplus(θ_d) + eps
    (initialised to `init_var` = 5.0); elementwise value 0.5 · ((t − μ)² / σ² + log σ²).
    VID's variance is per *dimension*, shared by all samples, so it treats samples equally; it is
    not compatible with PAD (which would add a second variance).
    """

    def __init__(self, student_dim: int, teacher_dim: int, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.regressor = nn.Sequential(
            nn.Linear(student_dim, teacher_dim),
            nn.ReLU(),
            nn.Linear(teacher_dim, teacher_dim),
            nn.ReLU(),
            nn.Linear(teacher_dim, teacher_dim),
        )
        self.log_scale = nn.Parameter(torch.full((teacher_dim,), math.log(math.expm1(init_var - eps))))

    def variance(self) -> torch.Tensor:
        """Per-dimension σ² (D_t,)."""
        return F.softplus(self.log_scale) + self.eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mu = self.regressor(s)
        check_pair(mu, t, "vid (regressed student vs teacher)")
        var = self.variance()
        return 0.5 * ((t - mu).pow(2) / var + torch.log(var))


class VIDOptions(OptionsModel):
    init_var: float = Field(5.0, gt=1e-5, description="initial per-dimension variance σ²")


@register_loss("vid")
class VIDDistill(DistillLoss):
    """Elementwise Gaussian NLL (B, D_t) of the teacher embedding under the regressed student."""

    Options = VIDOptions
    options: VIDOptions

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        student_dim, teacher_dim = ctx.dims(self.name)
        self.vid = VIDLoss(student_dim, teacher_dim, init_var=self.options.init_var)

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        return [Term(self.vid(student.embedding, teacher.embedding))]
