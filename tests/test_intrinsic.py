"""TwoNN validation: Pareto self-test, uniform manifolds of known dimension, scikit-dimension, protocol."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from facekd.refo.intrinsic import (
    deduplicate,
    fit_twonn,
    intrinsic_dimension,
    parse_subset,
    two_nn_distances,
    twonn,
)


def _embed(points: np.ndarray, ambient: int, rng) -> np.ndarray:
    """Place (N, k) points in R^ambient by a random isometry (orthonormal columns) plus an offset."""
    q, _ = np.linalg.qr(rng.standard_normal((ambient, points.shape[1])))
    return points @ q.T + rng.standard_normal(ambient)


def _sphere(n, k, rng):  # uniform on S^k ⊂ R^(k+1): intrinsic dimension k
    g = rng.standard_normal((n, k + 1))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _cube(n, k, rng):  # uniform in [0, 1]^k
    return rng.random((n, k))


def _slow_fit(mu, discard_fraction):
    """Direct float64 loop: OLS through the origin of −log(1 − i/N) on log μ_(i), i ≤ int(N(1−f))."""
    mu = sorted(float(m) for m in mu)
    n = len(mu)
    sxy = sxx = 0.0
    for i in range(min(int(n * (1 - discard_fraction)), n - 1)):
        x = np.log(mu[i])
        y = -np.log(1.0 - (i + 1) / n)
        sxy += x * y
        sxx += x * x
    return sxy / sxx


def test_fit_matches_slow_loop():
    rng = np.random.default_rng(1)
    mu = 1.0 + rng.exponential(0.3, size=257)
    for f in (0.0, 0.1, 0.25):
        assert fit_twonn(mu, f) == pytest.approx(_slow_fit(mu, f), rel=1e-12)


@pytest.mark.parametrize("d", [2, 5, 10, 20])
@pytest.mark.parametrize("method", ["fit", "mle"])
def test_pareto_recovers_d(d, method):
    # μ = U^(−1/d) is Pareto(1, d); at N = 5000 the estimator's sd is ≈ 0.02·d (measured over
    # 20 seeds), so 0.08·d is a 4-sigma band.
    rng = np.random.default_rng(d)
    mu = rng.random(5000) ** (-1.0 / d)
    assert fit_twonn(mu, 0.1, method) == pytest.approx(d, rel=0.08)


# Uniform samples of N = 3000 in an ambient space of dimension k + 12. TwoNN is exact for the
# Pareto law only locally; finite N and (for cubes) the boundary make it underestimate as k grows
# (numerics.md §3.4, item 4). d̂/k measured over 10 seeds (min–max): sphere 2: 0.96–1.08,
# 5: 0.96–1.03, 10: 0.92–0.98, 20: 0.81–0.90; cube 2: 0.95–1.04, 5: 0.90–0.97, 10: 0.83–0.89,
# 20: 0.75–0.81. Tolerance: the estimate lies in [lo·k, hi·k].
BANDS = {2: (0.90, 1.12), 5: (0.85, 1.08), 10: (0.78, 1.03), 20: (0.70, 1.03)}


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 5, 10, 20])
@pytest.mark.parametrize("shape", ["sphere", "cube"])
def test_uniform_manifolds(k, shape):
    rng = np.random.default_rng(100 + k)
    pts = (_sphere if shape == "sphere" else _cube)(3000, k, rng)
    x = _embed(pts, k + 12, rng)
    res = twonn(x)
    lo, hi = BANDS[k]
    assert lo * k <= res.dimension <= hi * k, (shape, k, res.dimension)
    assert res.n_used == 3000 and res.n_duplicates == 0


@pytest.mark.slow
@pytest.mark.parametrize("k", [3, 12])
def test_agrees_with_scikit_dimension(k):
    # scikit-dimension's TwoNN (≥ 0.4: F_i = i/N, int(N·0.9) kept, OLS without intercept) is the
    # same estimator; only the neighbour search differs (sklearn vs FAISS + float64 recompute).
    skdim = pytest.importorskip("skdim")
    rng = np.random.default_rng(k)
    x = _embed(_sphere(2000, k, rng), 40, rng)  # ambient > 25 → skdim uses full distance rows
    ours = twonn(x).dimension
    ref = skdim.id.TwoNN(discard_fraction=0.1).fit(x).dimension_
    assert ours == pytest.approx(ref, rel=1e-5)


def test_neighbour_distances_match_bruteforce():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 7)).astype(np.float32)
    r1, r2 = two_nn_distances(x)
    d = cdist(x.astype(np.float64), x.astype(np.float64))
    np.fill_diagonal(d, np.inf)
    d.sort(axis=1)
    np.testing.assert_allclose(r1, d[:, 0], rtol=1e-12)
    np.testing.assert_allclose(r2, d[:, 1], rtol=1e-12)


def test_near_duplicates_keep_exact_distances():
    # Two points 1e-4 apart at norm ~100: FAISS' float32 expansion loses them, the recompute does not.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 5)) * 100
    x[1] = x[0] + np.array([1e-4, 0, 0, 0, 0])
    x = x.astype(np.float32)
    r1, _ = two_nn_distances(x)
    exact = np.linalg.norm(x[1].astype(np.float64) - x[0].astype(np.float64))
    assert r1[0] == pytest.approx(exact, rel=1e-9) and r1[1] == pytest.approx(exact, rel=1e-9)


def test_duplicates_removed_and_counted():
    rng = np.random.default_rng(5)
    base = _embed(_sphere(1000, 4, rng), 10, rng)
    x = np.concatenate([base, base[:30], base[:5]])  # 35 duplicate rows
    rng.shuffle(x)
    res = twonn(x)
    assert res.n_duplicates == 35 and res.n_used == 1000
    assert res.dimension == pytest.approx(twonn(base).dimension, rel=1e-6)
    uniq, n = deduplicate(np.array([[1.0, 2.0], [0.0, 0.0], [1.0, 2.0]]))
    assert n == 1 and uniq.tolist() == [[1.0, 2.0], [0.0, 0.0]]


def test_angle_distance_close_to_chord_on_dense_sphere():
    rng = np.random.default_rng(6)
    x = _sphere(2000, 3, rng).astype(np.float32)
    chord, angle = twonn(x).dimension, twonn(x, distance="angle").dimension
    assert angle == pytest.approx(chord, rel=0.02) and angle != chord
    with pytest.raises(ValueError, match="L2-normalised"):
        twonn(x * 2, distance="angle")


@pytest.mark.slow
def test_protocol_subset_reps_and_seed():
    rng = np.random.default_rng(7)
    emb = _embed(_sphere(4000, 6, rng), 32, rng)
    emb[3999] = emb[0]  # one duplicate somewhere in the data
    res = intrinsic_dimension(emb, subset=0.5, reps=5, fraction=0.9, seed=3)
    assert res.n_subset == 2000 and len(res.values) == 5
    assert res.n_used + res.n_duplicates == 2000
    assert res.n_per_rep == int(0.9 * res.n_used)
    assert res.mean == pytest.approx(np.mean(res.values)) and res.std == pytest.approx(np.std(res.values))
    assert 0 < res.std < 0.5 and 5.0 < res.mean < 6.5
    again = intrinsic_dimension(emb, subset=0.5, reps=5, fraction=0.9, seed=3)
    assert again.values == res.values
    assert intrinsic_dimension(emb, subset=0.5, reps=5, seed=4).values != res.values
    # normalize=True: the estimate is scale-invariant per row
    scaled = emb * rng.uniform(0.5, 2.0, size=(4000, 1))
    assert intrinsic_dimension(scaled, subset=1000, reps=2, seed=1).values == pytest.approx(
        intrinsic_dimension(emb, subset=1000, reps=2, seed=1).values, rel=1e-5
    )


def test_bad_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        twonn(np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 3 distinct"):
        twonn(np.ones((10, 3)))
    with pytest.raises(ValueError, match="remove duplicates"):
        fit_twonn(np.array([1.5, np.inf, 2.0]))
    with pytest.raises(ValueError, match="subset fraction"):
        intrinsic_dimension(np.ones((10, 3)), subset=1.5)
    with pytest.raises(ValueError, match="zero norm"):
        intrinsic_dimension(np.zeros((10, 3)), subset=None)
    assert parse_subset("0.01") == 0.01 and parse_subset("5000") == 5000 and parse_subset("1%") == 0.01
    with pytest.raises(ValueError, match="--subset"):
        parse_subset("many")


def test_cli_intrinsic_dim(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from facekd.refo.commands import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in facekd.cli (a lone command would become the app itself)
    register(app)
    rng = np.random.default_rng(8)
    np.save(tmp_path / "emb.npy", _embed(_sphere(1500, 4, rng), 16, rng).astype(np.float32))
    out = tmp_path / "id.json"
    r = CliRunner().invoke(
        app, ["intrinsic-dim", str(tmp_path / "emb.npy"), "--subset", "1000", "--reps", "3", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "intrinsic dimension" in r.output and "3 reps × 900 points" in r.output
    saved = json.loads(out.read_text())
    assert len(saved["values"]) == 3 and 3.5 < saved["mean"] < 5.0
    r = CliRunner().invoke(app, ["intrinsic-dim", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "expected an embedding cache" in str(r.exception)
