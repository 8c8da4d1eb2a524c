"""Uniformity of a training list (Eq. 4 with the weighted density of Eq. 9).

Our reading of Eq. 4: the smoothed density f̂_h of the (possibly resampled, weights ω) list is
evaluated at every point of the dataset, normalised over those N points into a distribution
p_i = f̂_h(x_i) / Σ_j f̂_h(x_j), and the uniformity is its entropy U = -Σ_i p_i log p_i (nats). U is
at most log N (a perfectly even density), so we also report U / log N in [0, 1]. Points that the
list never draws (ω_i = 0) are still evaluated: a list that leaves a region empty lowers U.
Any constant normalisation E of Eq. 3 cancels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facekd.bias.kde import angular_kde

__all__ = ["UniformityResult", "entropy_of_density", "uniformity"]


@dataclass
class UniformityResult:
    uniformity: float  # entropy in nats
    normalized: float  # uniformity / log N
    n: int
    bandwidth: float  # radians


def entropy_of_density(density: np.ndarray) -> float:
    """-Σ p log p of p = density / Σ density over the evaluation points (nats). density: (N,) >= 0."""
    f = np.asarray(density, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"density: expected a non-empty 1-D array, got shape {f.shape}")
    if (f < 0).any() or not np.isfinite(f).all() or f.sum() <= 0:
        raise ValueError("density: values must be finite, non-negative, with a positive sum")
    p = f / f.sum()
    nz = p > 0
    return float(-(p[nz] * np.log(p[nz])).sum())


def uniformity(embeddings, bandwidth: float, weights=None, method: str = "auto", **kde_options) -> UniformityResult:
    """Uniformity (Eq. 4, 9) of the list with per-row weights ω over the dataset `embeddings`.

    embeddings: (N, d); bandwidth: radians; weights: (N,) draws per row (e.g. `list_weights`) or
    None for the dataset itself. `kde_options` go to `angular_kde`.
    """
    density = angular_kde(embeddings, bandwidth, weights, method, **kde_options)
    u = entropy_of_density(density)
    n = density.size
    return UniformityResult(u, u / math.log(n) if n > 1 else 1.0, n, float(bandwidth))
