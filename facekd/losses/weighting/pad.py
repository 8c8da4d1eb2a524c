"""`pad`: Prime-Aware Adaptive Distillation's uncertainty-weighted loss (Eq. 7).

"Prime-Aware Adaptive Distillation" (Zhang et al., ECCV 2020, arXiv 2008.01458): each sample's
regression error is divided by a variance σ² that a small branch predicts from the student, plus
ln σ², so samples the student cannot fit (large σ²) weigh less. The branches themselves
(`facekd.losses.variance`) are held by the Distiller, built by the PAD-compatible loss (l2, fitnet,
at) through `PadBranches`, and configured by this weighting's options (sigma, detach, init_logvar).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from facekd.losses.variance import PadBranches, pad_log_variance
from facekd.losses.weighting.base import Term, Weighting, WeightingOptions, gap, reduce_dims, register_weighting

__all__ = ["PADOptions", "PADWeighting", "pad_log_variance", "pad_nll"]


def pad_nll(sq_err: torch.Tensor, logvar: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PAD's Eq. 7 elementwise: (f_s − y)² / σ² + ln σ², σ² = exp(logvar) + eps; (B, D) → (B, D).

    logvar may be (B, D) (σ per dimension) or (B, 1) (one σ per sample, broadcast). No 1/2 factor
    (as Eq. 7 and the public code).
    """
    if logvar.dim() != 2 or logvar.shape[0] != sq_err.shape[0] or logvar.shape[1] not in (1, sq_err.shape[1]):
        raise ValueError(f"PAD log-variance shape {tuple(logvar.shape)} does not fit errors {tuple(sq_err.shape)}")
    s = pad_log_variance(logvar, eps)
    return sq_err * torch.exp(-s) + s


class PADOptions(WeightingOptions):
    sigma: Literal["per_dim", "per_sample"] = Field(
        "per_dim", description="one σ per regressed element (the public code) or one per sample"
    )
    detach: bool = Field(True, description="the variance branch reads a detached student output")
    init_logvar: float = Field(0.0, description="BN bias of the branch at init: σ² starts near exp(init_logvar)")
    l2_stage_steps: int = Field(0, ge=0, description="plain L2 for this many steps, then PAD")
    var_eps: float = Field(1e-6, gt=0, description="variance floor: σ² = exp(s) + var_eps")


@register_weighting("pad")
class PADWeighting(Weighting):
    """PAD (Eq. 7): mean over the batch of Σ_terms reduce_D[(f_s − y)² · exp(−s) + s].

    Every term must be elementwise and carry `logvar` (s = log σ², from the Distiller's variance
    branch). dim_reduce "sum" is Eq. 7 as printed; "mean" is the authors' / torchdistill's code.
    The batch is averaged (Eq. 7 sums; the mean keeps λ independent of the batch size).

    l2_stage_steps: before this step, plain uniform L2 is used (PAD "after an L2 stage", as in
    torchdistill's official config); 0 (default) = PAD from scratch. The variance branch still takes
    part in the graph (with zero weight) so DDP sees all parameters used.

    var_eps: variance floor, σ² = exp(s) + var_eps (default 1e-6, as torchdistill), see
    `pad_log_variance`.

    sigma / detach / init_logvar configure the variance branches (see `facekd.losses.variance`).

    Returned per-sample weights: mean over (masked) dimensions of 1/σ², normalised to sum 1.
    """

    Options = PADOptions
    requires_elementwise = True
    uses_variance = True

    def __init__(
        self,
        sigma: str = "per_dim",
        detach: bool = True,
        init_logvar: float = 0.0,
        l2_stage_steps: int = 0,
        var_eps: float = 1e-6,
        **kw,
    ):
        super().__init__(**kw)
        self.sigma, self.detach, self.init_logvar = sigma, bool(detach), float(init_logvar)
        self.l2_stage_steps = int(l2_stage_steps)
        self.var_eps = float(var_eps)

    def variance_branches(self, branches: nn.ModuleList) -> PadBranches:
        return PadBranches(branches, self.sigma == "per_dim", self.init_logvar, self.detach, self.var_eps)

    def forward(self, terms: list[Term], step: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logvars = []
        for i, t in enumerate(terms):
            if not t.elementwise or t.logvar is None:
                raise ValueError(f"pad: term {i} must be elementwise (B, D) with a predicted log-variance")
            logvars.append(t.logvar)
        d = gap(terms, self.dim_reduce)
        if step < self.l2_stage_steps:
            keep_graph = sum(lv.sum() for lv in logvars) * 0.0
            return d.mean() + keep_graph, torch.full_like(d, 1.0 / d.numel()), d.detach()
        nll, inv_var = [], []
        for t, raw in zip(terms, logvars):
            logvar = pad_log_variance(raw, self.var_eps)
            inv = torch.exp(-logvar)  # 1/σ², computed once for the loss and the reported weight
            nll.append(reduce_dims(t.values * inv + logvar, t.mask, self.dim_reduce))
            inv_var.append(reduce_dims(inv.detach().expand_as(t.values), t.mask, "mean"))
        w = torch.stack(inv_var).mean(dim=0)
        return torch.stack(nll).sum(dim=0).mean(), w / w.sum(), d.detach()
