"""`darkrank`: DarkRank's HardRank, the teacher's ranking of the batch under the student's scores."""

from __future__ import annotations

import torch
from pydantic import Field

from facekd.losses.distill.base import DistillLoss, Features, register_loss
from facekd.losses.distill.pairwise import pdist
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["DarkRankDistill", "DarkRankOptions", "darkrank_loss"]


def darkrank_loss(s: torch.Tensor, t: torch.Tensor, alpha: float = 3.0, beta: float = 3.0) -> torch.Tensor:
    """DarkRank HardRank ("DarkRank: Accelerating Deep Metric Learning via Cross Sample
    Similarities Transfer", Chen et al. 2018, arXiv 1707.01220), per anchor (query):
    (B, Ds), (B, Dt) → (B,).

    Scores S(i, j) = −α ‖x_i − x_j‖^β over the other B−1 samples; π = the teacher's ranking of them
    (descending score). Sample i's value is the Plackett–Luce negative log-likelihood of π under the
    student scores: Σ_k [log Σ_{m≥k} exp S_s(π_m) − S_s(π_k)]. α = β = 3 as in the paper.
    """
    B = s.shape[0]
    if t.shape[0] != B or B < 2:
        raise ValueError(f"darkrank: need the same batch size ≥ 2, got {B} and {t.shape[0]}")
    off = ~torch.eye(B, dtype=torch.bool, device=s.device)
    ss = (-alpha * pdist(s).pow(beta))[off].view(B, B - 1)
    with torch.no_grad():
        st = (-alpha * pdist(t).pow(beta))[off].view(B, B - 1)
        order = st.argsort(dim=1, descending=True)
    x = ss.gather(1, order)
    tail_lse = torch.logcumsumexp(x.flip(1), dim=1).flip(1)
    return (tail_lse - x).sum(dim=1)


class DarkRankOptions(OptionsModel):
    rank_alpha: float = Field(3.0, gt=0, description="α of the score −α‖x_i − x_j‖^β")
    rank_beta: float = Field(3.0, gt=0, description="β of the score −α‖x_i − x_j‖^β")


@register_loss("darkrank")
class DarkRankDistill(DistillLoss):
    """Per-query Plackett–Luce NLL (B,) on the compared embeddings."""

    Options = DarkRankOptions
    options: DarkRankOptions

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        o = self.options
        return [Term(darkrank_loss(student.embedding, teacher.embedding, o.rank_alpha, o.rank_beta))]
