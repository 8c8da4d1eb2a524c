"""PK batches for metric learning (P identities × K images), registered as sampler "pk"."""

from __future__ import annotations

from pydantic import Field

from facekd.bias.samplers.base import SamplerOptions, SamplingData, register_sampler
from facekd.data.pk_sampler import PKSampler

__all__ = ["PKOptions", "build_pk"]


class PKOptions(SamplerOptions):
    p: int = Field(16, ge=1, strict=True, description="identities per batch (reid-strong-baseline: 16)")
    k: int = Field(4, ge=1, strict=True, description="images per identity (reid-strong-baseline: 4)")


@register_sampler("pk", PKOptions, needs=("labels",))
def build_pk(options: PKOptions, data: SamplingData, seed: int) -> PKSampler:
    """P identities × K images per batch (`facekd.data.pk_sampler.PKSampler`); batch_size = P·K."""
    data.require(("labels",), "pk")
    return PKSampler(data.labels, p=options.p, k=options.k, seed=seed)
