"""`hard_mining`: the exponential hard-sample up-weighting PAD's Table 1 compares against."""

from __future__ import annotations

import torch
from pydantic import Field

from facekd.losses.weighting.base import Weighting, WeightingOptions, register_weighting


class HardMiningOptions(WeightingOptions):
    T: float = Field(1.0, gt=0, description="temperature: smaller concentrates on the largest gaps")


@register_weighting("hard_mining")
class HardMiningWeighting(Weighting):
    """Hard mining (PAD Table 1, following HAP2S): w_i = softmax(+d_i / T); T > 0 (default 1)."""

    Options = HardMiningOptions

    def __init__(self, T: float = 1.0, **kw):
        super().__init__(**kw)
        self.T = float(T)

    def weights(self, d: torch.Tensor) -> torch.Tensor:
        return torch.softmax(d / self.T, dim=0)
