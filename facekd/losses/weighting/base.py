"""What every weighting shares: `Term`, the dimension reduction, the `Weighting` base, the registry.

A weighting receives a distillation loss as one or more `Term`s (elementwise (B, D) or per-sample
(B,) values, see `facekd.losses.distill`), forms the per-sample gap d_i = Σ_terms reduce_D(values)
and returns Σ_i w_i d_i with Σ_i w_i = 1 (PAD, which weights by a learned variance, overrides
`forward`). Weights are computed from detached gaps by default (``detach_weights=True``: they act as
weights, not as an extra gradient path) and normalised within the local batch (per DDP rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from facekd.losses.registry import OptionsModel, Registry, parse_options
from facekd.losses.variance import PadBranches

__all__ = [
    "DIM_REDUCTIONS",
    "WEIGHTINGS",
    "Term",
    "Weighting",
    "WeightingOptions",
    "gap",
    "get_weighting",
    "reduce_dims",
    "register_weighting",
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


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Distillation-loss warm-up: min(1, step / warmup_steps); 1 when warmup_steps == 0."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be ≥ 0, got {warmup_steps}")
    if warmup_steps == 0:
        return 1.0
    return min(1.0, max(0, step) / warmup_steps)


def gap(terms: list[Term], dim_reduce: str) -> torch.Tensor:
    """Per-sample gap d_i (B,): sum over terms of the dimension-reduced values."""
    if not terms:
        raise ValueError("no loss terms to weight")
    return torch.stack([reduce_dims(t.values, t.mask, dim_reduce) for t in terms]).sum(dim=0)


class WeightingOptions(OptionsModel):
    """Options every weighting takes."""

    dim_reduce: Literal["sum", "mean"] = "sum"
    detach_weights: bool = True


class Weighting(nn.Module):
    """Base: forward(terms, step) → (scalar loss, per-sample weights (B,) detached, gap (B,) detached).

    Subclasses define `weights(d)` giving (B,) non-negative weights that sum to 1, and declare
    `Options` (their schema, extending `WeightingOptions`), `uses_variance` (PAD: the Distiller
    builds variance branches for it) and `requires_warmup` (the "warmup" name).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[WeightingOptions]] = WeightingOptions
    requires_elementwise: ClassVar[bool] = False
    uses_variance: ClassVar[bool] = False
    requires_warmup: ClassVar[bool] = False

    def __init__(self, dim_reduce: str = "sum", detach_weights: bool = True):
        super().__init__()
        if dim_reduce not in DIM_REDUCTIONS:
            raise ValueError(f"dim_reduce must be one of {DIM_REDUCTIONS}, got {dim_reduce!r}")
        self.dim_reduce = dim_reduce
        self.detach_weights = detach_weights

    def weights(self, d: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def reads_backbone(cls, options: dict[str, Any]) -> bool:
        """True when, with these options, the weighting's variance branch reads the backbone
        feature beside the student's embedding layer (PAD's `branch_input: backbone`)."""
        return False

    def variance_branches(self, branches: nn.ModuleList, backbone_dim: int | None = None) -> PadBranches | None:
        """The variance branches this weighting needs, built into `branches` by the loss (PAD); None.
        backbone_dim: width of the backbone feature beside the student's embedding layer, if known."""
        return None

    def forward(self, terms: list[Term], step: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = gap(terms, self.dim_reduce)
        w = self.weights(d.detach() if self.detach_weights else d)
        return (w * d).sum(), w.detach(), d.detach()


WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting", "facekd.losses.weighting")
register_weighting = WEIGHTINGS.register


def get_weighting(name: str, **options: Any) -> Weighting:
    """Build a weighting by config name; `options` are checked against its `Options` schema."""
    cls = WEIGHTINGS.lookup(name)
    parsed = parse_options(cls.Options, options, f"weighting {name!r}")
    return cls(**parsed.model_dump())
