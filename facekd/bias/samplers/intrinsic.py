"""Intrinsic Sampling (Eq. 10 of "Rectifying the Data Bias"): draws with p_i ∝ 1 / f̂_h(x_i)."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from facekd.bias.bandwidth import BandwidthSpec, resolve_bandwidth
from facekd.bias.kde import DensityOptions, angular_kde
from facekd.bias.samplers.base import BaseSampler, SamplerOptions, SamplingData, register_sampler
from facekd.bias.samplers.uniform import check_num

__all__ = [
    "DEFAULT_IS_BANDWIDTH",
    "IntrinsicOptions",
    "IntrinsicSampler",
    "intrinsic_probabilities",
    "intrinsic_sampling",
]

DEFAULT_IS_BANDWIDTH = math.radians(12.0)  # the paper's h for Intrinsic Sampling


def intrinsic_probabilities(density: np.ndarray) -> np.ndarray:
    """Eq. 10: p_i = (1/f̂_h(x_i)) / Σ_j 1/f̂_h(x_j). density: (N,) > 0 -> float64 (N,)."""
    f = np.asarray(density, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"density: expected a non-empty 1-D array, got shape {f.shape}")
    if not np.isfinite(f).all() or (f <= 0).any():
        bad = np.flatnonzero(~np.isfinite(f) | (f <= 0))
        raise ValueError(
            f"density: {bad.size} values are not finite and positive (first rows: {bad[:5].tolist()}); "
            "use include_self=True so every density is >= the point's own term"
        )
    inv = 1.0 / f
    return inv / inv.sum()


def _draw(p: np.ndarray, num: int | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(p.size, size=check_num(num, p.size), replace=True, p=p).astype(np.int64)


def intrinsic_sampling(
    embeddings,
    bandwidth: float = DEFAULT_IS_BANDWIDTH,
    num: int | None = None,
    seed: int = 0,
    *,
    density: np.ndarray | None = None,
    method: str = "auto",
    **kde_options,
) -> np.ndarray:
    """Intrinsic Sampling (Eq. 10): `num` (default N) i.i.d. draws with p_i ∝ 1/f̂_h(x_i).

    embeddings: (N, d); bandwidth: radians (default 12°, may differ from the uniformity bandwidth);
    a precomputed `density` (N,) skips the KDE. Returns int64 (num,).
    """
    if density is None:
        density = angular_kde(embeddings, bandwidth, None, method, **kde_options)
    return _draw(intrinsic_probabilities(density), num, seed)


class IntrinsicOptions(SamplerOptions):
    bandwidth: BandwidthSpec = Field("12deg", description="angle with unit in (0°, 180°], or auto (Eq. 5-7)")
    num: int | None = Field(None, ge=0, strict=True, description="draws per epoch; default: the dataset size")
    density: DensityOptions = Field(
        default_factory=lambda: DensityOptions.model_validate({}), description="how f̂_h is computed"
    )


@register_sampler("intrinsic", IntrinsicOptions, needs=("embeddings",))
class IntrinsicSampler(BaseSampler):
    """Intrinsic Sampling on the teacher embeddings: the density is computed once (first epoch),
    each epoch draws `num` rows i.i.d. from p ∝ 1/f̂_h with `default_rng(seed + epoch)`.
    Under torchrun the density's rows are shared out over the ranks (`angular_kde`)."""

    options: IntrinsicOptions

    def __init__(self, options: IntrinsicOptions, data: SamplingData, seed: int):
        data.require(("embeddings",), self.name)
        super().__init__(options, data, seed)
        # h in radians, and the rule's result (Eq. 5-7) when the bandwidth is "auto"
        self.bandwidth, self.rule = resolve_bandwidth(options.bandwidth, data.embeddings, data.labels)
        self._p: np.ndarray | None = None

    def probabilities(self) -> np.ndarray:
        """Eq. 10's p (float64 (N,)), computed on first use and kept."""
        if self._p is None:
            kwargs = self.options.density.kwargs(self.data.n, self.data.labels)
            density = angular_kde(self.data.embeddings, self.bandwidth, None, progress=self.data.progress, **kwargs)
            self._p = intrinsic_probabilities(density)
        return self._p

    def indices(self, epoch: int) -> np.ndarray:
        return _draw(self.probabilities(), self.options.num, self.seed + int(epoch))

    def resolved_options(self) -> dict:
        return {
            "bandwidth": self.bandwidth,
            "num": self.options.num,
            "density": self.options.density.resolved(self.data.n),
        }
