"""`hard_discarding`: drop the largest gaps of each batch (PAD Table 1)."""

from __future__ import annotations

import torch
from pydantic import Field

from facekd.losses.weighting.base import Weighting, WeightingOptions, register_weighting


class HardDiscardingOptions(WeightingOptions):
    fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of the batch discarded, in [0, 1)")


@register_weighting("hard_discarding")
class HardDiscardingWeighting(Weighting):
    """Hard discarding (PAD Table 1): drop the ⌊fraction·B⌋ largest gaps of the batch, mean the rest.

    At least one sample is always kept. fraction ∈ [0, 1), default 0.1.
    """

    Options = HardDiscardingOptions

    def __init__(self, fraction: float = 0.1, **kw):
        super().__init__(**kw)
        self.fraction = float(fraction)

    def weights(self, d: torch.Tensor) -> torch.Tensor:
        B = d.numel()
        k = min(int(self.fraction * B), B - 1)
        w = torch.ones_like(d)
        if k > 0:
            w[torch.topk(d.detach(), k).indices] = 0.0
        return w / w.sum()
