"""`pad`: Prime-Aware Adaptive Distillation's uncertainty-weighted loss (Eq. 7).

"Prime-Aware Adaptive Distillation" (Zhang et al., ECCV 2020, arXiv 2008.01458): each sample's
regression error is divided by a variance σ² that a small branch predicts beside the student's
output, plus ln σ², so samples the student cannot fit (large σ²) weigh less. The branches
themselves (`facekd.losses.variance`) are held by the Distiller, built by the PAD-compatible loss
(l2, fitnet, at) through `PadBranches`, and configured by this weighting's options.

The defaults are one recipe, the same in a config and in the demo (docs/distillation.md, "PAD"):
one σ per sample (`sigma: per_sample`), the mean over dimensions (`dim_reduce: mean`), σ² starting
at 1/D (`init_logvar: auto`, so that PAD starts with exactly the weight of uniform L2 at the same
λ), the branch reading the backbone feature beside the embedding layer, not detached.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from facekd.losses.registry import parse_options
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
    dim_reduce: Literal["sum", "mean"] = Field(
        "mean", description="mean (the public code) or sum of the per-element terms of a sample"
    )
    sigma: Literal["per_dim", "per_sample"] = Field(
        "per_sample", description="one σ per sample (Eq. 7's σ_i) or one per regressed element (the public code)"
    )
    branch_input: Literal["backbone", "regressed"] = Field(
        "backbone", description="the branch reads the backbone feature beside the student's output, or the output"
    )
    detach: bool = Field(False, description="the variance branch reads a detached input")
    init_logvar: float | Literal["auto"] = Field(
        "auto", description="BN bias of the branch at init; auto: σ² = 1/D under dim_reduce mean, 1 under sum"
    )
    branch_grad: Literal["lambda_free", "as_loss"] = Field(
        "lambda_free", description="lambda_free: the Distiller divides the branch's gradient by λ·warm-up"
    )
    l2_stage_steps: int = Field(0, ge=0, description="plain L2 for this many steps, then PAD")
    branch_clip: float | None = Field(
        1.0, gt=0, description="each branch parameter's gradient is clipped to this norm every step; None: off"
    )
    var_eps: float = Field(1e-6, gt=0, description="variance floor: σ² = exp(s) + var_eps")


@register_weighting("pad")
class PADWeighting(Weighting):
    """PAD (Eq. 7): mean over the batch of Σ_terms reduce_D[(f_s − y)² · exp(−s) + s].

    Every term must be elementwise and carry `logvar` (s = log σ², from the Distiller's variance
    branch). dim_reduce "mean" is the authors' / torchdistill's code, "sum" Eq. 7 as printed. The
    batch is averaged (Eq. 7 sums; the mean keeps λ independent of the batch size).

    init_logvar "auto": −ln D under dim_reduce "mean" (D = regressed elements per sample), 0 under
    "sum": at σ² = 1/D (resp. 1) the weighted error equals the summed squared error d_i, so PAD
    starts with the weight of uniform L2 (`dim_reduce: sum`) at the same λ.

    branch_grad "lambda_free" (default): the Distiller divides the gradient that flows through the
    predicted log-variance by λ·warm-up, so the branch (and, not detached, its path into the
    backbone) learns at a λ-free rate; "as_loss" leaves the gradient of λ·Eq. 7 as it is. Needed:
    with "as_loss" at the demo's λ = 20 (SGD, lr 0.1) the log-variance ran away to ≈ 1700 within an
    epoch and distillation stopped (docs/distillation.md, "PAD").

    branch_clip (default 1.0): every step, the gradient of each parameter of the variance branch is
    scaled down to at most this norm (per tensor, per process). The gradient of Eq. 7 on s is
    1 − e/σ², unbounded for a sample whose error e far exceeds its predicted σ² (label noise, the
    hardest images), and such batches throw the branch about: on the default demo without it the
    spread of ln σ² over the training set was 0.25 / 0.04 / 0.32 (Spearman with the gap +0.43 /
    +0.01 / +0.48) over seeds 0-2, with it 0.56 / 0.54 / 0.58 (+0.83 / +0.81 / +0.82), and a
    branch learning rate 10× higher or lower did not help (docs/distillation.md, "PAD").

    l2_stage_steps: before this step, plain uniform L2 is used (PAD "after an L2 stage", as in
    torchdistill's official config); 0 (default) = PAD from scratch. The variance branch still takes
    part in the graph (with zero weight) so DDP sees all parameters used.

    After a forward, `parts` holds detached (B,) tensors: "weighted_gap" (Σ_terms reduce_D of
    (f_s − y)²/σ²), "log_sigma2" (the ln σ² term; the loss is their sum, batch-averaged) and
    "effective_weight" (the factor c_i with weighted_gap_i = c_i·d_i for d_i the *summed* squared
    error: λ·c_i is the λ of uniform L2 that would weigh sample i as PAD does).

    Returned per-sample weights: mean over (masked) dimensions of 1/σ², normalised to sum 1.
    """

    Options = PADOptions
    requires_elementwise = True
    uses_variance = True

    def __init__(
        self,
        sigma: str = "per_sample",
        branch_input: str = "backbone",
        detach: bool = False,
        init_logvar: float | str = "auto",
        branch_grad: str = "lambda_free",
        l2_stage_steps: int = 0,
        var_eps: float = 1e-6,
        branch_clip: float | None = 1.0,
        dim_reduce: str = "mean",
        **kw,
    ):
        super().__init__(dim_reduce=dim_reduce, **kw)
        self.sigma, self.branch_input, self.detach = sigma, branch_input, bool(detach)
        self.init_logvar = init_logvar if init_logvar == "auto" else float(init_logvar)
        self.branch_grad = branch_grad
        self.l2_stage_steps = int(l2_stage_steps)
        self.var_eps = float(var_eps)
        self.branch_clip = None if branch_clip is None else float(branch_clip)
        self.parts: dict[str, torch.Tensor] = {}

    @classmethod
    def reads_backbone(cls, options: dict[str, Any]) -> bool:
        parsed = parse_options(cls.Options, options, "weighting 'pad'")
        return isinstance(parsed, PADOptions) and parsed.branch_input == "backbone"

    def initial_logvar(self, elements: int) -> float:
        """BN bias at init for a branch whose quantity has `elements` elements per sample."""
        if self.init_logvar != "auto":
            return float(self.init_logvar)
        return -math.log(elements) if self.dim_reduce == "mean" else 0.0

    def variance_branches(self, branches: nn.ModuleList, backbone_dim: int | None = None) -> PadBranches:
        return PadBranches(
            branches,
            per_dim=self.sigma == "per_dim",
            init_logvar=self.initial_logvar,
            detach=self.detach,
            branch_input=self.branch_input,
            backbone_dim=backbone_dim,
            var_eps=self.var_eps,
            lambda_free=self.branch_grad == "lambda_free",
            grad_clip=self.branch_clip,
        )

    def forward(self, terms: list[Term], step: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logvars = []
        for i, t in enumerate(terms):
            if not t.elementwise or t.logvar is None:
                raise ValueError(f"pad: term {i} must be elementwise (B, D) with a predicted log-variance")
            logvars.append(t.logvar)
        d = gap(terms, self.dim_reduce)
        if step < self.l2_stage_steps:
            keep_graph = sum(lv.sum() for lv in logvars) * 0.0
            self.parts = {}
            return d.mean() + keep_graph, torch.full_like(d, 1.0 / d.numel()), d.detach()
        weighted, log_term, inv_var, factor = [], [], [], []
        for t, raw in zip(terms, logvars):
            logvar = pad_log_variance(raw, self.var_eps)
            inv = torch.exp(-logvar)  # 1/σ², computed once for the loss and the reported weight
            weighted.append(reduce_dims(t.values * inv, t.mask, self.dim_reduce))
            log_term.append(reduce_dims(logvar.expand_as(t.values), t.mask, self.dim_reduce))
            mean_inv = reduce_dims(inv.detach().expand_as(t.values), t.mask, "mean")
            inv_var.append(mean_inv)
            factor.append(mean_inv / self._elements(t) if self.dim_reduce == "mean" else mean_inv)
        wg, lt = torch.stack(weighted).sum(dim=0), torch.stack(log_term).sum(dim=0)
        w = torch.stack(inv_var).mean(dim=0)
        self.parts = {
            "weighted_gap": wg.detach(),
            "log_sigma2": lt.detach(),
            "effective_weight": torch.stack(factor).mean(dim=0),
        }
        return (wg + lt).mean(), w / w.sum(), d.detach()

    @staticmethod
    def _elements(t: Term) -> torch.Tensor:
        """Number of (masked) elements of each sample of a term: (B,)."""
        if t.mask is None:
            return torch.full((t.values.shape[0],), float(t.values.shape[1]), device=t.values.device)
        return t.mask.sum(dim=1).clamp(min=torch.finfo(t.values.dtype).tiny)
