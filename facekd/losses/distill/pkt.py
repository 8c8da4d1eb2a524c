"""`pkt`: probabilistic knowledge transfer of the batch's similarity distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facekd.losses.distill.base import DistillLoss, Features, register_loss
from facekd.losses.weighting import Term

__all__ = ["PKTDistill", "pkt_loss"]


def pkt_loss(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer ("Learning Deep Representations with Probabilistic Knowledge
    Transfer", Passalis & Tefas 2018, arXiv 1803.10837), per anchor: → (B,).

    Cosine similarities mapped to [0, 1] by (c + 1) / 2 and row-normalised into conditional
    probabilities p(j | i); sample i's value is KL(p_t(·|i) ‖ p_s(·|i)) summed over j. (The
    authors' code takes the mean over all B² terms, i.e. our batch mean divided by B.)
    """
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"pkt: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")

    def cond(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)
        sim = (x @ x.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    ps = cond(s)
    with torch.no_grad():
        pt = cond(t)
    return (pt * torch.log((pt + eps) / (ps + eps))).sum(dim=1)


@register_loss("pkt")
class PKTDistill(DistillLoss):
    """Per-anchor KL of the conditional similarity distributions (B,) on the compared embeddings."""

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        return [Term(pkt_loss(student.embedding, teacher.embedding))]
