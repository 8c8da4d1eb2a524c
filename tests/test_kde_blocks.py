"""Exact density in blocks sized from a memory budget: the plan, the streamed reference and the
dense (GPU) epilogue give the results of the plain full-width path."""

import math

import numpy as np
import pytest
import torch

from facekd.bias.blocks import CPU_CHUNK_BYTES, MIN_QUERY_ROWS, plan_blocks
from facekd.bias.kde import _exact_row_sums, kde_exact

H = math.radians(25)
CPU = torch.device("cpu")


def _data(n=700, d=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x[: n // 3] = x[0] + 0.3 * x[: n // 3]  # a dense clump, so kernels are far from 0
    w = rng.integers(0, 4, n).astype(float)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), w


def test_cpu_plan_is_the_full_width_256mib_block():
    p = plan_blocks(10_000, 10_000, 512, ref_bytes_per_value=4, device=CPU)
    assert p.resident and p.ref_rows == 10_000 and p.query_rows == CPU_CHUNK_BYTES // (4 * 10_000)
    p = plan_blocks(300, 10_000, 512, ref_bytes_per_value=4, device=CPU)
    assert (p.query_rows, p.ref_rows) == (300, 10_000)


def test_a_large_reference_gets_thousands_of_rows_not_a_dozen():
    # 5.2M × 512 float32 with the 256 MiB block: full width would be 12 rows
    p = plan_blocks(5_200_000, 5_200_000, 512, ref_bytes_per_value=4, device=CPU)
    assert p.query_rows == MIN_QUERY_ROWS and p.ref_rows == CPU_CHUNK_BYTES // (4 * MIN_QUERY_ROWS)
    # an H200-sized budget (126 GB usable): the reference (10.6 GB) stays, 4 GiB blocks
    p = plan_blocks(5_200_000, 5_200_000, 512, ref_bytes_per_value=4, device=CPU, memory_bytes=126 * 10**9)
    assert p.resident and p.query_rows * p.ref_rows * 4 <= 4 << 30 and p.query_rows >= MIN_QUERY_ROWS


def test_a_reference_larger_than_half_the_budget_is_streamed():
    # 42M × 512 float32 (86 GB) on an 80 GB card: streamed in blocks of a quarter of the budget
    budget = 72 * 10**9
    p = plan_blocks(42_000_000 // 8, 42_000_000, 512, ref_bytes_per_value=4, device=CPU, memory_bytes=budget)
    assert not p.resident
    assert p.ref_rows * 512 * 4 <= budget // 4 and p.query_group_rows * 512 * 4 <= budget // 4
    assert p.query_rows >= MIN_QUERY_ROWS


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("rows", [None, (100, 523)])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-6)])
def test_streamed_blocks_equal_the_resident_full_width_path(weighted, rows, dtype, rtol):
    """float32 products of other shapes may round differently (BLAS picks its kernel by shape):
    equal to float32 rounding; in float64, to 1e-12."""
    x, w = _data()
    w = w if weighted else None
    # 64 KiB of "device memory": the 134 KiB reference streams in blocks, the queries in groups
    small = {"memory_bytes": 64 << 10, "chunk_bytes": 256 << 10}
    for tol in (0, 1e-4):
        ref = kde_exact(x, H, w, truncate_tol=tol, rows=rows, dtype=dtype, progress=False)
        got = kde_exact(x, H, w, truncate_tol=tol, rows=rows, dtype=dtype, progress=False, **small)
        np.testing.assert_allclose(got.density, ref.density, rtol=rtol)


def test_dense_epilogue_equals_every_pair_summed():
    """The dense path (default on CUDA: no skipping, no host sync) against truncate_tol=0."""
    x, w = _data()
    for weights in (None, w):
        ref = kde_exact(x, H, weights, truncate_tol=0, progress=False)
        dense = kde_exact(x, H, weights, epilogue="dense", memory_bytes=64 << 10, chunk_bytes=256 << 10, progress=False)
        np.testing.assert_allclose(dense.density, ref.density, rtol=2e-6)
        assert dense.truncation_bound.max() == 0.0  # every pair evaluated


def test_row_sums_equal_a_direct_float64_loop():
    x, w = _data(n=60, d=6)
    h = math.radians(40)
    xs = x.astype(np.float64)
    want = [
        sum(
            w[j]
            * math.exp(-((math.acos(min(1.0, max(-1.0, float(xs[i] @ xs[j])))) if i != j else 0.0) ** 2) / (2 * h * h))
            for j in range(60)
        )
        for i in range(60)
    ]
    got = _exact_row_sums(
        torch.from_numpy(x).double(), 0, 60, h, -1.0, torch.from_numpy(w), memory_bytes=4 << 10, chunk_bytes=512
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


# ----------------------------------------------------------------------------- identity cells
def _identities(n=900, d=128, ids=60, twins=6, seed=0):
    """Face-like unit rows with labels (rows at ~25° from their identity's centre, centres ~90°
    apart in 128-d); `twins` identities sit at cosine 0.8 of another."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres[:twins] = 0.8 * centres[twins : 2 * twins] + 0.6 * centres[:twins]
    labels = rng.integers(0, ids, n)
    x = centres[labels] + 0.45 * rng.standard_normal((n, d)) / math.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_identity_cells_density_is_close_to_exact_and_within_its_bound():
    from facekd.bias.kde import kde_knn

    x, labels = _identities()
    h = math.radians(12)
    ref = kde_exact(x, h, truncate_tol=0, progress=False).density
    got = kde_knn(x, h, index="ivf", labels=labels, nprobe=4, truncate_tol=0, progress=False)
    assert got.method == "knn-identity"
    assert np.all(ref - got.density >= -1e-6 * ref)  # a sum over fewer pairs never exceeds the exact one
    assert np.all(ref - got.density <= got.truncation_bound + 1e-6 * ref)  # exact cell graph: rigorous bound
    assert np.max((ref - got.density) / ref) < 1e-3
    alone = kde_knn(x, h, index="ivf", labels=labels, nprobe=1, truncate_tol=0, progress=False)
    assert np.max((ref - alone.density) / ref) > 1e-2  # the twin identities' mass needs the cell graph
    every = kde_knn(x, h, index="ivf", labels=labels, nprobe=60, cell_max=40, truncate_tol=0, progress=False)
    np.testing.assert_allclose(every.density, ref, rtol=1e-6)  # probing every cell is exact


def test_identity_cells_density_with_a_graph_over_the_cells(monkeypatch):
    from facekd.bias.kde import kde_knn

    monkeypatch.setattr("facekd.bias.kde.EXACT_CELLS", 10)  # above: FAISS HNSW instead of the dense product
    x, labels = _identities()
    h = math.radians(12)
    ref = kde_exact(x, h, truncate_tol=0, progress=False).density
    got = kde_knn(x, h, index="ivf", labels=labels, nprobe=4, truncate_tol=0, progress=False).density
    assert np.all(ref - got >= -1e-6 * ref) and np.max((ref - got) / ref) < 1e-3


def test_density_options_pass_labels_to_identity_cells_only():
    from facekd.bias.kde import DensityOptions

    labels = np.arange(10)
    ivf = DensityOptions.model_validate({"method": "knn", "index": "ivf"})
    assert ivf.kwargs(10, labels)["labels"] is not None
    with pytest.raises(ValueError, match="needs the labels"):
        ivf.kwargs(10)
    kmeans = DensityOptions.model_validate({"method": "knn", "index": "ivf", "cells": "kmeans"})
    assert "labels" not in kmeans.kwargs(10, labels) and kmeans.resolved(10)["cells"] == "kmeans"
    assert "labels" not in DensityOptions.model_validate({"method": "exact"}).kwargs(10, labels)
