"""`uniform` (w_i = 1/B, the batch mean) and `warmup` (uniform, with λ ramping from 0)."""

from __future__ import annotations

import torch

from facekd.losses.weighting.base import Weighting, register_weighting


@register_weighting("uniform")
class UniformWeighting(Weighting):
    """All samples equally: w_i = 1/B (the batch mean)."""

    def weights(self, d: torch.Tensor) -> torch.Tensor:
        return torch.full_like(d, 1.0 / d.numel())


@register_weighting("warmup")
class WarmupWeighting(UniformWeighting):
    """Uniform weighting whose config name demands a warm-up: the Distiller ramps λ linearly from 0
    over `options.warmup_steps` (> 0) steps (`facekd.losses.weighting.warmup_factor`)."""

    requires_warmup = True
