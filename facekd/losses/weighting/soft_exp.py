"""`soft_exp`: PAD Eq. 3, soft down-weighting of large gaps."""

from __future__ import annotations

import torch
from pydantic import Field

from facekd.losses.weighting.base import Weighting, WeightingOptions, register_weighting


class SoftExpOptions(WeightingOptions):
    T: float = Field(1.0, gt=0, description="temperature: smaller suppresses large gaps harder")


@register_weighting("soft_exp")
class SoftExpWeighting(Weighting):
    """PAD Eq. 3: w_i = exp(−d_i/T) / Σ_j exp(−d_j/T); T > 0 (default 1) sets the suppression."""

    Options = SoftExpOptions

    def __init__(self, T: float = 1.0, **kw):
        super().__init__(**kw)
        self.T = float(T)

    def weights(self, d: torch.Tensor) -> torch.Tensor:
        return torch.softmax(-d / self.T, dim=0)
