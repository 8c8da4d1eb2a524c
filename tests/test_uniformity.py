"""Uniformity (Eq. 4, 9): entropy against a loop, the paper's Fig. 3 property, weighted lists."""

import itertools
import math

import numpy as np
import pytest

from facekd.bias import entropy_of_density, intrinsic_sampling, list_weights, uniformity


def _on_circle(t):
    """1-D positions t (radians) -> unit vectors on a great circle: angle distance = |t_i - t_j|."""
    return np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], 1)


def test_entropy_matches_loop():
    f = np.array([0.3, 0.1, 0.05, 0.5, 0.05])
    total = sum(f)
    ref = -sum((v / total) * math.log(v / total) for v in f)
    assert entropy_of_density(f) == pytest.approx(ref, rel=1e-12)
    assert entropy_of_density(np.ones(7)) == pytest.approx(math.log(7))


def test_uniformity_matches_direct_float64():
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, 40)
    w = rng.integers(0, 3, 40).astype(float)
    h = 0.2
    dens = [sum(w[j] * math.exp(-(((t[i] - t[j]) / h) ** 2) / 2) for j in range(40)) for i in range(40)]
    p = np.array(dens) / sum(dens)
    ref = -sum(v * math.log(v) for v in p)
    res = uniformity(_on_circle(t), h, w, method="exact", truncate_tol=0, dtype="float64", progress=False)
    assert res.uniformity == pytest.approx(ref, rel=1e-9)
    assert res.normalized == pytest.approx(ref / math.log(40), rel=1e-9)


@pytest.mark.slow
def test_fig3_truncated_gaussian_monotone():
    """Fig. 3: samples of a truncated Gaussian on [-1, 1] with growing variance -> uniformity rises.

    (Entropy of the normalised density is scale-invariant for an untruncated Gaussian once h << σ,
    so the rise comes from the truncation: σ spans the range where it matters.)
    """
    rng = np.random.default_rng(0)
    n, h = 2000, 0.05
    values = []
    for sigma in (0.25, 0.4, 0.6, 1.0, 2.0):
        t = rng.normal(0, sigma, 20 * n)
        t = t[np.abs(t) <= 1][:n]
        values.append(uniformity(_on_circle(t), h, method="exact", progress=False).normalized)
    assert all(a < b for a, b in itertools.pairwise(values)), values
    # and a uniform sample is the most uniform
    u = uniformity(_on_circle(rng.uniform(-1, 1, n)), h, method="exact", progress=False).normalized
    assert u > values[-1] - 1e-3


def test_intrinsic_list_is_more_uniform_than_dataset():
    rng = np.random.default_rng(1)
    t = np.concatenate([rng.normal(0, 0.1, 900), rng.uniform(-1, 1, 100)])
    x = _on_circle(t)
    base = uniformity(x, 0.05, method="exact", progress=False).normalized
    samples = intrinsic_sampling(x, 0.05, num=20000, seed=0, method="exact", progress=False)
    resampled = uniformity(x, 0.05, list_weights(samples, len(t)), method="exact", progress=False).normalized
    assert resampled > base + 0.01
