"""`cc`: correlation congruence between the batch's kernel matrices."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from facekd.losses.distill.base import DistillLoss, Features, register_loss
from facekd.losses.distill.pairwise import pdist
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["CCDistill", "CCOptions", "cc_loss"]


def _kernel(e: torch.Tensor, kernel: str, gamma: float) -> torch.Tensor:
    if kernel == "gaussian":
        return torch.exp(-gamma * pdist(e, squared=True))
    if kernel == "bilinear":
        return e @ e.t()
    raise ValueError(f"cc: unknown kernel {kernel!r}; expected 'gaussian' or 'bilinear'")


def cc_loss(s: torch.Tensor, t: torch.Tensor, kernel: str = "gaussian", gamma: float = 0.4) -> torch.Tensor:
    """Correlation congruence ("Correlation Congruence for Knowledge Distillation", Peng et al. 2019,
    arXiv 1904.01802), per anchor: (B, Ds), (B, Dt) → (B,).

    Correlation matrices C_ij = k(x_i, x_j) with a Gaussian RBF kernel exp(−γ‖x_i − x_j‖²)
    computed exactly (the paper uses its P-th order Taylor expansion; γ = 0.4 as there) or the
    bilinear kernel x_i·x_j. Loss = ‖C_s − C_t‖²_F / B²; sample i's value is its row sum / B.
    """
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"cc: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")
    cs = _kernel(s, kernel, gamma)
    with torch.no_grad():
        ct = _kernel(t, kernel, gamma)
    return (cs - ct).pow(2).sum(dim=1) / s.shape[0]


class CCOptions(OptionsModel):
    kernel: Literal["gaussian", "bilinear"] = "gaussian"
    gamma: float = Field(0.4, gt=0, description="γ of the Gaussian kernel exp(−γ‖x_i − x_j‖²)")


@register_loss("cc")
class CCDistill(DistillLoss):
    """Per-anchor correlation congruence (B,) on the compared embeddings."""

    Options = CCOptions
    options: CCOptions

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        o = self.options
        return [Term(cc_loss(student.embedding, teacher.embedding, o.kernel, o.gamma))]
