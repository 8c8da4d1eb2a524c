"""Bandwidth rule (Eq. 5-7) against a direct float64 loop."""

import math

import numpy as np
import pytest

from facekd.bias import bandwidth_rule


def slow_rule(x, labels, min_images=2):
    hs, skipped = [], 0
    for c in sorted(set(labels.tolist())):
        rows = [x[i] / np.linalg.norm(x[i]) for i in range(len(x)) if labels[i] == c]
        if len(rows) < min_images:
            skipped += 1
            continue
        centre = sum(rows)
        centre = centre / np.linalg.norm(centre)
        sq = [math.acos(max(-1.0, min(1.0, float(r @ centre)))) ** 2 for r in rows]
        sigma = math.sqrt(sum(sq) / len(rows))  # Eq. 6
        hs.append(0.9 * sigma * len(rows) ** (-1 / 5))  # Eq. 5 per class
    return sum(hs) / len(hs), skipped  # Eq. 7


def test_matches_loop_and_counts_skipped():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 7 + [1] * 3 + [5] * 1 + [9] * 12)
    centres = rng.standard_normal((10, 8))
    x = centres[labels] + 0.4 * rng.standard_normal((len(labels), 8))
    res = bandwidth_rule(x, labels)
    ref, skipped = slow_rule(x, labels)
    assert res.bandwidth == pytest.approx(ref, rel=1e-6)
    assert (res.n_used, res.n_skipped) == (3, 1) and skipped == 1
    assert np.isnan(res.sigma[list(res.classes).index(5)])
    assert res.degrees == pytest.approx(math.degrees(ref), rel=1e-6)


def test_scale_follows_spread():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(20), 10)
    centres = rng.standard_normal((20, 64))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    h = [
        bandwidth_rule(centres[labels] + s * rng.standard_normal((200, 64)) / 8, labels).bandwidth
        for s in (0.1, 0.3, 0.6)
    ]
    assert h[0] < h[1] < h[2]


def test_bad_input():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="labels"):
        bandwidth_rule(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="no class"):
        bandwidth_rule(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="NaN"):
        bandwidth_rule(np.full((4, 3), np.nan), np.zeros(4, int))
