"""Per-sample weighting schemes: turn unreduced distillation losses into one scalar.

"Prime-Aware Adaptive Distillation" (Zhang et al., ECCV 2020) writes a distillation loss as
Eq. 1, L = (1/N) Σ_i w_i d(x_i), and compares choices of w_i. Here a weighting receives the loss as
one or more `Term`s (elementwise (B, D) or per-sample (B,) values, see `facekd.losses.distill`),
forms the per-sample gap d_i = Σ_terms reduce_D(values) and returns Σ_i w_i d_i with Σ_i w_i = 1,
so "uniform" is exactly the batch mean:

========================  =================================================================
name                      w_i (before normalising to sum 1)
========================  =================================================================
``uniform``               1
``soft_exp`` (Eq. 3)      exp(−d_i / T)              (T > 0, default 1)
``soft_poly`` (Eq. 4)     (1 + d_i)^(−α)             (α > 0, default 1)
``hard_mining``           exp(+d_i / T)              (the HAP2S-style exponential hard mining
                                                      PAD's Table 1 follows; T default 1)
``hard_discarding``       0 for the ⌊fraction·B⌋ largest d_i of the batch, else 1
                                                     (fraction default 0.1)
``pad`` (Eq. 7)           not a weight on d_i: mean_i Σ_d [(f_s − y)²_d / σ²_d + ln σ²_d],
                          σ² = exp(s) + 1e-6, s from the variance branch (1/σ² acts as the weight)
========================  =================================================================

Weights are computed from detached gaps by default (``detach_weights=True``): they act as weights,
not as an extra gradient path. They are normalised within the local batch (per DDP rank).
Loss warm-up (λ ramping linearly from 0) is `warmup_factor`, applied by the Distiller to any
weighting; the config name ``warmup`` is uniform weighting plus a warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "WEIGHTINGS",
    "HardDiscardingWeighting",
    "HardMiningWeighting",
    "PADWeighting",
    "SoftExpWeighting",
    "SoftPolyWeighting",
    "Term",
    "UniformWeighting",
    "Weighting",
    "get_weighting",
    "pad_log_variance",
    "pad_nll",
    "reduce_dims",
    "warmup_factor",
]

DIM_REDUCTIONS = ("sum", "mean")


@dataclass
class Term:
    """One unreduced distillation loss term.

    values: (B, D) elementwise squared errors (or NLL) or (B,) per-sample values.
    mask: optional (B, D) non-negative weights of the elements (e.g. a detector's spatial
        imitation mask, broadcast over channels and flattened); only for elementwise values.
    logvar: PAD's predicted log σ², (B, D) per dimension or (B, 1) per sample; only for PAD.
    """

    values: torch.Tensor
    mask: torch.Tensor | None = None
    logvar: torch.Tensor | None = None

    @property
    def elementwise(self) -> bool:
        return self.values.dim() == 2


def reduce_dims(values: torch.Tensor, mask: torch.Tensor | None = None, how: str = "sum") -> torch.Tensor:
    """(B, D) → (B,) by sum or mean over D (masked: Σ m·v, or Σ m·v / Σ m); (B,) passes through.

    A sample whose mask is all zero gets 0 under "mean".
    """
    if how not in DIM_REDUCTIONS:
        raise ValueError(f"dim_reduce must be one of {DIM_REDUCTIONS}, got {how!r}")
    if values.dim() == 1:
        if mask is not None:
            raise ValueError("a mask applies only to elementwise (B, D) loss values")
        return values
    if values.dim() != 2:
        raise ValueError(f"loss values must be (B,) or (B, D), got shape {tuple(values.shape)}")
    if mask is None:
        return values.sum(dim=1) if how == "sum" else values.mean(dim=1)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != loss values shape {tuple(values.shape)}")
    total = (values * mask).sum(dim=1)
    if how == "sum":
        return total
    return total / mask.sum(dim=1).clamp(min=torch.finfo(values.dtype).tiny)


def pad_log_variance(logvar: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log σ² with σ² = exp(logvar) + eps, computed stably as logaddexp(logvar, log eps).

    The variance floor eps (torchdistill's PADL2Loss adds 1e-6 to exp(s) too) bounds the weight
    1/σ² ≤ 1/eps, so a branch that drives s → −∞ cannot overflow the loss; for large s nothing
    overflows either (exp(−s) underflows to 0).
    """
    return torch.logaddexp(logvar, torch.tensor(math.log(eps), dtype=logvar.dtype, device=logvar.device))


def pad_nll(sq_err: torch.Tensor, logvar: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PAD's Eq. 7 elementwise: (f_s − y)² / σ² + ln σ², σ² = exp(logvar) + eps; (B, D) → (B, D).

    logvar may be (B, D) (σ per dimension) or (B, 1) (one σ per sample, broadcast). No 1/2 factor
    (as Eq. 7 and the public code).
    """
    if logvar.dim() != 2 or logvar.shape[0] != sq_err.shape[0] or logvar.shape[1] not in (1, sq_err.shape[1]):
        raise ValueError(f"PAD log-variance shape {tuple(logvar.shape)} does not fit errors {tuple(sq_err.shape)}")
    s = pad_log_variance(logvar, eps)
    return sq_err * torch.exp(-s) + s


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Distillation-loss warm-up: min(1, step / warmup_steps); 1 when warmup_steps == 0."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be ≥ 0, got {warmup_steps}")
    if warmup_steps == 0:
        return 1.0
    return min(1.0, max(0, step) / warmup_steps)


def _gap(terms: list[Term], dim_reduce: str) -> torch.Tensor:
    """Per-sample gap d_i (B,): sum over terms of the dimension-reduced values."""
    if not terms:
        raise ValueError("no loss terms to weight")
    return torch.stack([reduce_dims(t.values, t.mask, dim_reduce) for t in terms]).sum(dim=0)


class Weighting(nn.Module):
    """Base: forward(terms, step) → (scalar loss, per-sample weights (B,) detached, gap (B,) detached).

    Subclasses define `weights(d)` giving (B,) non-negative weights that sum to 1.
    """

    requires_elementwise = False

    def __init__(self, dim_reduce: str = "sum", detach_weights: bool = True):
        super().__init__()
        if dim_reduce not in DIM_REDUCTIONS:
            raise ValueError(f"dim_reduce must be one of {DIM_REDUCTIONS}, got {dim_reduce!r}")
        self.dim_reduce = dim_reduce
        self.detach_weights = detach_weights

    def weights(self, d: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, terms: list[Term], step: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = _gap(terms, self.dim_reduce)
        w = self.weights(d.detach() if self.detach_weights else d)
        return (w * d).sum(), w.detach(), d.detach()


class UniformWeighting(Weighting):
    """All samples equally: w_i = 1/B (the batch mean)."""

    def weights(self, d):
        return torch.full_like(d, 1.0 / d.numel())


class SoftExpWeighting(Weighting):
    """PAD Eq. 3: w_i = exp(−d_i/T) / Σ_j exp(−d_j/T); T > 0 (default 1) sets the suppression."""

    def __init__(self, T: float = 1.0, **kw):
        super().__init__(**kw)
        if T <= 0:
            raise ValueError(f"soft_exp: T must be > 0, got {T}")
        self.T = float(T)

    def weights(self, d):
        return torch.softmax(-d / self.T, dim=0)


class SoftPolyWeighting(Weighting):
    """PAD Eq. 4: w_i = (1 + d_i)^(−α) / Σ_j (1 + d_j)^(−α); α > 0 (default 1)."""

    def __init__(self, alpha: float = 1.0, **kw):
        super().__init__(**kw)
        if alpha <= 0:
            raise ValueError(f"soft_poly: alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def weights(self, d):
        w = (1.0 + d).pow(-self.alpha)
        return w / w.sum()


class HardMiningWeighting(Weighting):
    """Hard mining (PAD Table 1, following HAP2S): w_i = softmax(+d_i / T); T > 0 (default 1)."""

    def __init__(self, T: float = 1.0, **kw):
        super().__init__(**kw)
        if T <= 0:
            raise ValueError(f"hard_mining: T must be > 0, got {T}")
        self.T = float(T)

    def weights(self, d):
        return torch.softmax(d / self.T, dim=0)


class HardDiscardingWeighting(Weighting):
    """Hard discarding (PAD Table 1): drop the ⌊fraction·B⌋ largest gaps of the batch, mean the rest.

    At least one sample is always kept. fraction ∈ [0, 1), default 0.1.
    """

    def __init__(self, fraction: float = 0.1, **kw):
        super().__init__(**kw)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"hard_discarding: fraction must be in [0, 1), got {fraction}")
        self.fraction = float(fraction)

    def weights(self, d):
        B = d.numel()
        k = min(int(self.fraction * B), B - 1)
        w = torch.ones_like(d)
        if k > 0:
            w[torch.topk(d.detach(), k).indices] = 0.0
        return w / w.sum()


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

    Returned per-sample weights: mean over (masked) dimensions of 1/σ², normalised to sum 1.
    """

    requires_elementwise = True

    def __init__(self, l2_stage_steps: int = 0, var_eps: float = 1e-6, **kw):
        super().__init__(**kw)
        if l2_stage_steps < 0:
            raise ValueError(f"pad: l2_stage_steps must be ≥ 0, got {l2_stage_steps}")
        if var_eps <= 0:
            raise ValueError(f"pad: var_eps must be > 0, got {var_eps}")
        self.l2_stage_steps = int(l2_stage_steps)
        self.var_eps = float(var_eps)

    def forward(self, terms, step=0):
        for i, t in enumerate(terms):
            if not t.elementwise or t.logvar is None:
                raise ValueError(f"pad: term {i} must be elementwise (B, D) with a predicted log-variance")
        d = _gap(terms, self.dim_reduce)
        if step < self.l2_stage_steps:
            keep_graph = sum(t.logvar.sum() for t in terms) * 0.0
            return d.mean() + keep_graph, torch.full_like(d, 1.0 / d.numel()), d.detach()
        nll, inv_var = [], []
        for t in terms:
            logvar = pad_log_variance(t.logvar, self.var_eps)
            inv = torch.exp(-logvar)  # 1/σ², computed once for the loss and the reported weight
            nll.append(reduce_dims(t.values * inv + logvar, t.mask, self.dim_reduce))
            inv_var.append(reduce_dims(inv.detach().expand_as(t.values), t.mask, "mean"))
        w = torch.stack(inv_var).mean(dim=0)
        return torch.stack(nll).sum(dim=0).mean(), w / w.sum(), d.detach()


WEIGHTINGS: dict[str, type[Weighting]] = {
    "uniform": UniformWeighting,
    "warmup": UniformWeighting,
    "soft_exp": SoftExpWeighting,
    "soft_poly": SoftPolyWeighting,
    "hard_mining": HardMiningWeighting,
    "hard_discarding": HardDiscardingWeighting,
    "pad": PADWeighting,
}


def get_weighting(name: str, **options) -> Weighting:
    """Build a weighting by config name (see the module docstring); options are its keyword args."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; expected one of {sorted(WEIGHTINGS)}")
    try:
        return WEIGHTINGS[name](**options)
    except TypeError as e:
        raise ValueError(f"weighting {name!r}: bad options {sorted(options)} ({e})") from None
