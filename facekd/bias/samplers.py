"""Sample lists for one epoch: Intrinsic, Extrinsic, identity-uniform (USI) and uniform sampling.

Every sampler returns an int64 array of dataset indices (one epoch of draws, with replacement
except the uniform baseline), determined by `seed`. The trainer consumes it through
`facekd.data.sampler.IndexListSampler`; `epoch_fn` builds the callable `epoch -> indices` that
regenerates a fresh list each epoch (seed + epoch) while computing the density / index only once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from facekd.bias.kde import angular_kde
from facekd.utils import check_embeddings

__all__ = [
    "DEFAULT_IS_BANDWIDTH",
    "METHODS",
    "epoch_fn",
    "extrinsic_sampling",
    "identity_uniform_probabilities",
    "identity_uniform_sampling",
    "intrinsic_probabilities",
    "intrinsic_sampling",
    "uniform_sampling",
]

DEFAULT_IS_BANDWIDTH = math.radians(12.0)  # the paper's h for Intrinsic Sampling
METHODS = ("intrinsic", "extrinsic", "usi", "uniform")


def _num(num: int | None, n: int) -> int:
    num = n if num is None else int(num)
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    return num


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
    p = intrinsic_probabilities(density)
    rng = np.random.default_rng(seed)
    return rng.choice(p.size, size=_num(num, p.size), replace=True, p=p).astype(np.int64)


def _flat_ip_index(x: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def extrinsic_sampling(
    embeddings, num: int | None = None, seed: int = 0, *, index=None, batch: int = 65536
) -> np.ndarray:
    """Extrinsic Sampling: for each of `num` (default N) directions a = g/|g|, g ~ N(0, I_d) (uniform on
    the sphere), take the dataset row with the largest cosine to a (exact FAISS inner-product
    search; pass a prebuilt FAISS `index` over the normalised embeddings to reuse or replace it).
    Ties (duplicate embeddings) go to the one FAISS returns. Returns int64 (num,).
    """
    x = check_embeddings(embeddings, "embeddings", require_unit=True)
    n, d = x.shape
    num = _num(num, n)
    index = _flat_ip_index(x) if index is None else index
    rng = np.random.default_rng(seed)
    out = np.empty(num, dtype=np.int64)
    for s in range(0, num, batch):
        e = min(s + batch, num)
        g = rng.standard_normal((e - s, d)).astype(np.float32)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        _, nbr = index.search(g, 1)
        out[s:e] = nbr[:, 0]
    return out


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    return labels


def identity_uniform_probabilities(labels) -> np.ndarray:
    """USI probabilities p_i = 1 / (C · n_{y_i}) over the C identities present. float64 (N,)."""
    labels = _check_labels(labels)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (counts.size * counts[inv].astype(np.float64))


def identity_uniform_sampling(labels, num: int | None = None, seed: int = 0) -> np.ndarray:
    """USI: `num` (default N) draws, each a uniformly random identity then a uniformly random image
    of it. labels: (N,) int. Returns int64 (num,)."""
    labels = _check_labels(labels)
    num = _num(num, labels.size)
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, counts.size, size=num)
    offset = np.floor(rng.random(num) * counts[cls]).astype(np.int64)
    return order[starts[cls] + np.minimum(offset, counts[cls] - 1)].astype(np.int64)


def uniform_sampling(n: int, num: int | None = None, seed: int = 0) -> np.ndarray:
    """The baseline: a random permutation of the n rows (each image once per epoch, as a shuffled
    DataLoader does); for num > n, permutations are concatenated and cut. Returns int64 (num,)."""
    if n <= 0:
        raise ValueError(f"uniform sampling: the dataset is empty (n={n})")
    num = _num(num, n)
    rng = np.random.default_rng(seed)
    reps = -(-num // n) if num else 0
    return np.concatenate([rng.permutation(n) for _ in range(reps)] or [np.empty(0, np.int64)])[:num].astype(np.int64)


def epoch_fn(
    method: str,
    *,
    embeddings=None,
    labels=None,
    n: int | None = None,
    num: int | None = None,
    seed: int = 0,
    bandwidth: float = DEFAULT_IS_BANDWIDTH,
    kde_method: str = "auto",
    **kde_options,
) -> Callable[[int], np.ndarray]:
    """A callable `epoch -> int64 sample list` for `IndexListSampler`, drawing with seed + epoch.

    method: "intrinsic" (needs embeddings; the KDE is computed once here), "extrinsic"
    (embeddings; the FAISS index is built once), "usi" (labels), "uniform" (n or labels/embeddings).
    `kde_method` and `kde_options` go to `angular_kde` (intrinsic only).
    """
    if method == "intrinsic":
        if embeddings is None:
            raise ValueError("intrinsic sampling needs the teacher embeddings")
        density = angular_kde(embeddings, bandwidth, None, kde_method, **kde_options)
        return lambda epoch: intrinsic_sampling(None, bandwidth, num, seed + epoch, density=density)
    if method == "extrinsic":
        if embeddings is None:
            raise ValueError("extrinsic sampling needs the teacher embeddings")
        x = check_embeddings(embeddings, "embeddings", require_unit=True)
        index = _flat_ip_index(x)
        return lambda epoch: extrinsic_sampling(x, num, seed + epoch, index=index)
    if method == "usi":
        if labels is None:
            raise ValueError("identity-uniform sampling needs the labels")
        return lambda epoch: identity_uniform_sampling(labels, num, seed + epoch)
    if method == "uniform":
        if n is None:
            src = labels if labels is not None else embeddings
            if src is None:
                raise ValueError("uniform sampling needs n (or labels / embeddings to count rows)")
            n = len(src)
        return lambda epoch: uniform_sampling(n, num, seed + epoch)
    raise ValueError(f"unknown sampling method {method!r}: expected one of {METHODS}")
