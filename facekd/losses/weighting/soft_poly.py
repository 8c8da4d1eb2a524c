"""`soft_poly`: PAD Eq. 4, polynomial down-weighting of large gaps."""

from __future__ import annotations

import torch
from pydantic import Field

from facekd.losses.weighting.base import Weighting, WeightingOptions, register_weighting


class SoftPolyOptions(WeightingOptions):
    alpha: float = Field(1.0, gt=0, description="exponent α of (1 + d_i)^(−α)")


@register_weighting("soft_poly")
class SoftPolyWeighting(Weighting):
    """PAD Eq. 4: w_i = (1 + d_i)^(−α) / Σ_j (1 + d_j)^(−α); α > 0 (default 1)."""

    Options = SoftPolyOptions

    def __init__(self, alpha: float = 1.0, **kw):
        super().__init__(**kw)
        self.alpha = float(alpha)

    def weights(self, d: torch.Tensor) -> torch.Tensor:
        w = (1.0 + d).pow(-self.alpha)
        return w / w.sum()
