"""Angular KDE (Eq. 3, 8, 9): exact and kNN paths against a direct float64 double loop."""

import math

import numpy as np
import pytest

from facekd.bias import angular_kde, kde_exact, kde_knn, list_weights

H = math.radians(20)


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(seed=0, n=60, d=6, k=4, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = _unit(rng, k, d)
    x = centres[rng.integers(0, k, n)] + spread * rng.standard_normal((n, d)) / math.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def slow_kde(x, h, w=None, include_self=True, normalization="weights"):
    """Eq. 3 / 9 by a double loop in Python floats (float64)."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    E = w.sum() if normalization == "weights" else 1.0
    out = np.zeros(n)
    for i in range(n):
        s = 0.0
        for j in range(n):
            if i == j and not include_self:
                continue
            theta = 0.0 if i == j else math.acos(max(-1.0, min(1.0, float(x[i] @ x[j]))))
            s += w[j] * math.exp(-((theta / h) ** 2) / 2)
        out[i] = s / E
    return out


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalization", ["weights", "none"])
def test_exact_matches_loop(include_self, weighted, normalization):
    x = _clustered(1)
    w = np.random.default_rng(2).integers(0, 4, len(x)).astype(float) if weighted else None
    ref = slow_kde(x, H, w, include_self, normalization)
    for dtype, rtol in [("float64", 1e-10), ("float32", 1e-4)]:
        got = angular_kde(
            x,
            H,
            w,
            "exact",
            include_self=include_self,
            normalization=normalization,
            truncate_tol=0,
            dtype=dtype,
            progress=False,
        )
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=1e-12)


def test_exact_truncation_within_bound_and_chunking():
    x = _clustered(3, n=200, d=16, k=10, spread=0.4)
    ref = slow_kde(x, H)
    res = kde_exact(x, H, truncate_tol=1e-2, chunk_bytes=4 * 200 * 7, progress=False)  # 7-row chunks
    err = ref - res.density
    assert (err >= -1e-6).all()  # truncation only removes mass
    assert (err <= res.truncation_bound + 1e-6).all()
    assert res.truncation_bound.max() == pytest.approx(1e-2 / 200, rel=1e-6)


def test_duplicates_are_valid():
    x = np.repeat(_clustered(4, n=10), 3, axis=0)
    got = angular_kde(x, H, method="exact", truncate_tol=0, progress=False)
    np.testing.assert_allclose(got, slow_kde(x, H), rtol=1e-4)
    # excluding self still counts the two other copies
    got = angular_kde(x, H, method="exact", include_self=False, truncate_tol=0, normalization="none", progress=False)
    assert got.min() >= 2 - 1e-4


def test_knn_flat_full_k_is_exact_and_bound_holds():
    x = _clustered(5, n=80)
    ref = slow_kde(x, H)
    full = kde_knn(x, H, k=80, progress=False)
    np.testing.assert_allclose(full.density, ref, rtol=1e-5)
    assert full.truncation_bound.max() == 0
    for k in (1, 5, 20):
        part = kde_knn(x, H, k=k, progress=False)
        err = ref - part.density
        assert (err >= -1e-6).all() and (err <= part.truncation_bound + 1e-6).all()
        # the bound is (N - k) K(θ_k) / E for unweighted data with self among the neighbours
    w = np.random.default_rng(0).integers(0, 3, 80).astype(float)
    wk = kde_knn(x, H, w, k=10, include_self=False, progress=False)
    err = slow_kde(x, H, w, include_self=False) - wk.density
    assert (err >= -1e-6).all() and (err <= wk.truncation_bound + 1e-6).all()


@pytest.mark.slow
def test_knn_ivf_close_to_exact_on_clusters():
    x = _clustered(6, n=400, d=32, k=8, spread=0.3)
    ref = slow_kde(x, H)
    got = kde_knn(x, H, index="ivf", nlist=8, nprobe=8, progress=False).density
    np.testing.assert_allclose(got, ref, rtol=1e-5)  # all cells probed: exact
    res = kde_knn(x, H, index="ivf", nlist=8, nprobe=2, progress=False)
    err = ref - res.density
    assert (err >= -1e-6).all() and (err <= res.truncation_bound + 1e-6).all()  # rigorous bound
    assert np.median(err / ref) < 1e-2
    w = np.random.default_rng(1).integers(0, 3, 400).astype(float)
    res = kde_knn(x, H, w, index="ivf", nlist=8, nprobe=3, include_self=False, progress=False)
    err = slow_kde(x, H, w, include_self=False) - res.density
    assert (err >= -1e-6).all() and (err <= res.truncation_bound + 1e-6).all()


def _small_identities(seed=0, n=3000, d=256, spread=0.4):
    """Identities of 2-6 images on orthogonal-ish centres: far more identities than IVF cells, so
    no cell follows an identity (the case where plain IVF probing misses a point's neighbours)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 7, n)
    labels = np.repeat(np.arange(n), sizes)[:n]
    x = _unit(rng, n, d)[labels] + spread * rng.standard_normal((n, d)) / math.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("recurse", [False, True])
def test_knn_ivf_finds_neighbours_of_unrepresented_points(recurse, monkeypatch):
    x = _small_identities()
    if recurse:  # the unrepresented points get their own cells instead of one exact product
        monkeypatch.setattr("facekd.bias.kde.CELLS_MIN_ROWS", 64)
    w = np.random.default_rng(3).integers(0, 3, len(x)).astype(float)
    for weights, include_self in [(None, True), (w, False)]:
        ref = kde_exact(x, math.radians(12), weights, include_self=include_self, truncate_tol=0, progress=False)
        res = kde_knn(x, math.radians(12), weights, index="ivf", nlist=300, include_self=include_self, progress=False)
        err = ref.density - res.density
        assert (err >= -1e-9).all() and (err <= res.truncation_bound + 1e-9).all()
        if weights is None:  # with the self term every density is ≥ 1/N
            assert (np.abs(err) / ref.density).max() <= 1e-3  # the benchmark's bar is 1e-2 at 100k
        else:  # zero-weight neighbourhoods leave densities near 0: compare with the largest
            assert np.abs(err).max() <= 1e-3 * ref.density.max()


@pytest.mark.slow
def test_knn_ivf_row_shards_match_the_full_result(monkeypatch):
    monkeypatch.setattr("facekd.bias.kde.CELLS_MIN_ROWS", 64)
    x = _small_identities(1, n=2000)
    full = kde_knn(x, math.radians(12), index="ivf", nlist=200, progress=False)
    parts = [
        kde_knn(x, math.radians(12), index="ivf", nlist=200, rows=r, progress=False) for r in [(0, 700), (700, 2000)]
    ]
    # same cells on every shard; float32 products of differently shaped blocks differ in the last bits
    np.testing.assert_allclose(np.concatenate([p.density for p in parts]), full.density, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([p.truncation_bound for p in parts]), full.truncation_bound, rtol=1e-5)


def test_list_weights():
    np.testing.assert_array_equal(list_weights(np.array([0, 2, 2, 4]), 5), [1, 0, 2, 0, 1])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        list_weights(np.array([5]), 5)


def test_bad_input():
    x = _clustered(7, n=10)
    bad = x.copy()
    bad[[2, 5]] = np.nan
    with pytest.raises(ValueError, match=r"2 rows contain NaN or inf \(first: \[2, 5\]\)"):
        angular_kde(bad, H)
    zero = x.copy()
    zero[3] = 0
    with pytest.raises(ValueError, match=r"1 rows have zero norm \(first: \[3\]\)"):
        angular_kde(zero, H)
    with pytest.raises(ValueError, match="bandwidth"):
        angular_kde(x, 0.0)
    with pytest.raises(ValueError, match="bandwidth"):
        angular_kde(x, -1.0)
    with pytest.raises(ValueError, match=r"weights: expected shape \(10,\)"):
        angular_kde(x, H, np.ones(9))
    with pytest.raises(ValueError, match="negative"):
        angular_kde(x, H, -np.ones(10))
    with pytest.raises(ValueError, match="empty"):
        angular_kde(np.zeros((0, 4), np.float32), H)
    with pytest.raises(ValueError, match="method"):
        angular_kde(x, H, method="fast")
    with pytest.raises(ValueError, match="GPU option"):
        angular_kde(x, H, method="exact", dtype="bf16")
