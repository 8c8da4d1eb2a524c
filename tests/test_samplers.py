"""Samplers: deterministic under a seed; empirical frequencies match their probabilities (chi-square)."""

import math

import numpy as np
import pytest
from scipy import stats

from facekd.bias import (
    epoch_fn,
    extrinsic_sampling,
    identity_uniform_probabilities,
    identity_uniform_sampling,
    intrinsic_probabilities,
    intrinsic_sampling,
    uniform_sampling,
)
from facekd.bias.kde import angular_kde

ALPHA = 1e-3  # fixed seeds: these tests are deterministic; the threshold documents the test's level


def _chi2_ok(samples, p):
    counts = np.bincount(samples, minlength=p.size)
    return stats.chisquare(counts, p * counts.sum()).pvalue > ALPHA


def _points(seed=0, n=25, d=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x[: n // 2] = x[0] + 0.1 * x[: n // 2]  # a dense clump
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_intrinsic_probabilities_eq10():
    f = np.array([0.5, 0.25, 1.0])
    inv = [1 / v for v in f]
    np.testing.assert_allclose(intrinsic_probabilities(f), np.array(inv) / sum(inv), rtol=1e-12)
    with pytest.raises(ValueError, match="not finite and positive"):
        intrinsic_probabilities(np.array([1.0, 0.0]))


def test_intrinsic_frequencies_and_determinism():
    x = _points()
    h = math.radians(30)
    s1 = intrinsic_sampling(x, h, num=50000, seed=3, method="exact", progress=False)
    s2 = intrinsic_sampling(x, h, num=50000, seed=3, method="exact", progress=False)
    assert s1.dtype == np.int64 and np.array_equal(s1, s2)
    assert not np.array_equal(s1, intrinsic_sampling(x, h, num=50000, seed=4, method="exact", progress=False))
    p = intrinsic_probabilities(angular_kde(x, h, method="exact", truncate_tol=0, progress=False))
    assert _chi2_ok(s1, p)
    assert p[: len(x) // 2].mean() < p[len(x) // 2 :].mean()  # the clump is under-sampled


def test_extrinsic_frequencies_match_voronoi_arcs():
    """On the circle (d=2), a uniform direction picks x_i with probability = its Voronoi arc / 2π."""
    rng = np.random.default_rng(0)
    ang = np.sort(np.concatenate([rng.uniform(0, 0.6, 8), rng.uniform(0, 2 * np.pi, 7)]))
    x = np.stack([np.cos(ang), np.sin(ang)], 1)
    gaps = np.diff(np.concatenate([ang, [ang[0] + 2 * np.pi]]))
    arcs = (gaps + np.roll(gaps, 1)) / 2
    p = arcs / (2 * np.pi)
    s = extrinsic_sampling(x, num=60000, seed=1)
    assert np.array_equal(s, extrinsic_sampling(x, num=60000, seed=1))
    assert _chi2_ok(s, p)


def test_usi_frequencies_and_determinism():
    labels = np.array([3] * 20 + [7] * 2 + [1] * 5 + [9])
    p = identity_uniform_probabilities(labels)
    np.testing.assert_allclose(p, [1 / (4 * 20)] * 20 + [1 / 8] * 2 + [1 / 20] * 5 + [1 / 4])
    s = identity_uniform_sampling(labels, num=40000, seed=2)
    assert np.array_equal(s, identity_uniform_sampling(labels, num=40000, seed=2))
    assert _chi2_ok(s, p)


def test_uniform_is_permutation():
    s = uniform_sampling(10, seed=5)
    assert sorted(s.tolist()) == list(range(10))
    assert np.array_equal(s, uniform_sampling(10, seed=5))
    assert np.bincount(uniform_sampling(10, num=25, seed=0), minlength=10).min() >= 2
    with pytest.raises(ValueError, match="empty"):
        uniform_sampling(0)


def test_epoch_fn_regenerates_per_epoch():
    x = _points(1)
    labels = np.arange(len(x)) % 3
    for method in ("intrinsic", "extrinsic", "usi", "uniform"):
        fn = epoch_fn(method, embeddings=x, labels=labels, num=30, seed=7, kde_method="exact", progress=False)
        a, b = fn(0), fn(1)
        assert a.shape == (30,) and a.dtype == np.int64 and a.max() < len(x)
        assert np.array_equal(a, fn(0)) and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown sampling method"):
        epoch_fn("random", n=5)


def _write_cache(directory, x, labels):
    """An EmbeddingCache directory written from its spec: meta.json + embeddings.npy + labels.npy."""
    import json

    directory.mkdir()
    np.save(directory / "embeddings.npy", x.astype(np.float32))
    np.save(directory / "labels.npy", labels.astype(np.int64))
    (directory / "meta.json").write_text(json.dumps({"complete": True, "n": len(x), "embedding_size": x.shape[1]}))


def test_cli_density_uniformity_resample(tmp_path):
    import typer
    from typer.testing import CliRunner

    from facekd.bias.commands import register

    app = typer.Typer()
    register(app)
    x = _points(2, n=30)
    labels = np.arange(30) % 4
    cache = tmp_path / "cache"
    _write_cache(cache, x, labels)
    run = CliRunner().invoke

    r = run(app, ["density", str(cache), "--bandwidth", "30deg", "--method", "exact", "--out", str(tmp_path / "d.npy")])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(
        np.load(tmp_path / "d.npy"), angular_kde(x, math.radians(30), method="exact", progress=False), rtol=1e-6
    )
    assert "wrote" in r.output and (tmp_path / "d_bound.npy").is_file()

    r = run(
        app, ["resample", str(cache), "--method", "usi", "--num", "50", "--seed", "3", "--out", str(tmp_path / "s.npy")]
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(tmp_path / "s.npy"), identity_uniform_sampling(labels, 50, 3))

    r = run(
        app,
        [
            "uniformity",
            str(cache),
            "--bandwidth",
            "auto",
            "--list",
            str(tmp_path / "s.npy"),
            "--out",
            str(tmp_path / "u.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "bandwidth rule" in r.output and "U/log N" in r.output

    r = run(app, ["resample", str(cache), "--method", "magic"])
    assert r.exit_code != 0
    r = run(app, ["density", str(tmp_path / "nope")])
    assert r.exit_code != 0 and isinstance(r.exception, FileNotFoundError)
