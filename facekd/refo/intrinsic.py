"""TwoNN intrinsic dimension (Facco et al. 2017), with the protocol of the ReFO supplementary.

The ratio μ = r2/r1 of each point's second- to first-neighbour distance is Pareto distributed,
F(μ) = 1 − μ^(−d), so −log(1 − F(μ)) = d · log μ. The estimator sorts μ, sets F_i = i/N and fits
a least-squares line through the origin on the smallest (1 − discard_fraction) share of the ratios;
its slope is d̂ (supplementary §2, Eq. 1–3; the code of Ansuini et al. 2019 that it follows).

Choices pinned down (docs/refo.md lists the variants between implementations):

* neighbours: exact FAISS search (`IndexFlatL2`), k = 4 including the query itself; the self
  match is removed *by index* (not by position, so ties at distance 0 cannot hide it) and r1, r2
  are recomputed in float64 from the coordinates, so the float32 ‖x‖² + ‖y‖² − 2x·y expansion
  FAISS uses cannot turn near-duplicates into zero or negative distances.
* duplicates: rows identical to an earlier row would give r1 = 0 and μ = ∞. They are removed
  before the neighbour search (one copy of each distinct row is kept) and counted.
* distance: Euclidean (for unit vectors this is the chord 2 sin(θ/2)); `distance="angle"`
  uses the geodesic angle θ instead (needs unit-norm rows). r2/r1 differs between the two only
  at O(θ²).
* fit: F_i = i/N over the N kept points (scikit-dimension ≥ 0.4's convention, after its
  off-by-one fix); the int(N · (1 − discard_fraction)) smallest μ enter an ordinary
  least-squares fit without intercept. `method="mle"` gives the censored maximum-likelihood
  estimate instead (the supplementary's Eq. 3 with the discarded ratios treated as censored).
* protocol (`intrinsic_dimension`): a fixed-seed random subset of the rows (the paper: 1 %),
  L2-normalised; 20 repetitions on random 90 % of that subset with neighbours recomputed inside
  each; mean ± population std (np.std, as Ansuini et al.) over the repetitions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from facekd.utils import check_embeddings

DISTANCES = ("euclidean", "angle")
METHODS = ("fit", "mle")
_CHUNK = 4096


def two_nn_distances(x: np.ndarray, *, distance: str = "euclidean", k_search: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Distances (r1, r2) of each row of `x` (N, D) to its first and second nearest other row.

    FAISS exact L2 search finds `k_search` candidates (including the row itself); the self match
    is dropped by index and the distances are recomputed in float64. Rows must be distinct (see
    `deduplicate`). Returns two float64 arrays (N,), in the units of `x` (or radians for
    `distance="angle"`).
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"TwoNN needs at least 3 distinct points, got {n}")
    k = min(max(k_search, 3), n)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nbr = index.search(x, k)  # (N, k) candidate indices, self usually first
    if (nbr < 0).any():
        raise RuntimeError("FAISS returned fewer neighbours than requested")
    x64 = x.astype(np.float64)
    dist = np.empty(nbr.shape, dtype=np.float64)
    for start in range(0, n, _CHUNK):  # chunks bound the (chunk, k, D) float64 difference tensor
        stop = min(start + _CHUNK, n)
        diff = x64[nbr[start:stop]] - x64[start:stop, None, :]
        dist[start:stop] = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
    dist[nbr == np.arange(n)[:, None]] = np.inf  # remove the self match by index
    dist.sort(axis=1)
    r1, r2 = dist[:, 0], dist[:, 1]
    if distance == "angle":
        norms = np.linalg.norm(x64, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-4):
            raise ValueError(
                f"distance='angle' needs L2-normalised rows (max |‖x‖ − 1| = {np.abs(norms - 1).max():.3g})"
            )
        r1, r2 = 2 * np.arcsin(np.clip(r1 / 2, 0, 1)), 2 * np.arcsin(np.clip(r2 / 2, 0, 1))
    return r1, r2


def deduplicate(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Keep the first copy of each distinct row of `x` (N, D); return (rows in original order, count removed)."""
    _, first = np.unique(np.ascontiguousarray(x), axis=0, return_index=True)
    first.sort()
    return x[first], int(x.shape[0] - first.size)


def fit_twonn(mu: np.ndarray, discard_fraction: float = 0.1, method: str = "fit") -> float:
    """Intrinsic dimension from the ratios μ = r2/r1 (N,) (all finite, ≥ 1).

    `method="fit"`: slope of the least-squares line through the origin of −log(1 − i/N) against
    log μ_(i), over the int(N · (1 − discard_fraction)) smallest μ (at most N − 1: F_N = 1 has no
    finite y). `method="mle"`: censored
    maximum likelihood (k − 1) / (Σ_{i≤k} log μ_(i) + (N − k) · log μ_(k)), k the kept count.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 <= discard_fraction < 1.0:
        raise ValueError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
    mu = np.sort(np.asarray(mu, dtype=np.float64).ravel())
    if not np.isfinite(mu).all() or (mu < 1.0).any():
        raise ValueError("mu must be finite ratios r2/r1 >= 1 (remove duplicates first)")
    n = mu.size
    n_keep = int(n * (1.0 - discard_fraction))
    if n_keep < 2:
        raise ValueError(f"too few ratios to fit: {n} points, {n_keep} kept after discarding {discard_fraction:.0%}")
    log_mu = np.log(mu[:n_keep])
    if method == "mle":
        return float((n_keep - 1) / (log_mu.sum() + (n - n_keep) * log_mu[-1]))
    n_fit = min(n_keep, n - 1)  # F_N = 1 would give y = ∞ (only reachable with discard_fraction = 0)
    log_mu = log_mu[:n_fit]
    y = -np.log1p(-np.arange(1, n_fit + 1) / n)
    denom = float(log_mu @ log_mu)
    if denom == 0.0:
        raise ValueError("all kept ratios equal 1 (r1 == r2 everywhere): dimension undefined")
    return float(log_mu @ y / denom)


@dataclass
class TwoNNResult:
    """One TwoNN estimate: dimension, points used, duplicates removed."""

    dimension: float
    n_used: int
    n_duplicates: int


def twonn(
    x: np.ndarray, discard_fraction: float = 0.1, *, method: str = "fit", distance: str = "euclidean"
) -> TwoNNResult:
    """TwoNN intrinsic dimension of the point cloud `x` (N, D) (see the module docstring for the choices)."""
    x = check_embeddings(x, "twonn input") if distance == "angle" else _check_points(x)
    unique, n_dup = deduplicate(x)
    r1, r2 = two_nn_distances(unique, distance=distance)
    return TwoNNResult(fit_twonn(r2 / r1, discard_fraction, method), int(unique.shape[0]), n_dup)


def _check_points(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"twonn input: expected a non-empty 2-D (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"twonn input: {bad.size} rows contain NaN or inf (first: {bad[:5].tolist()})")
    return x.astype(np.float32, copy=False)


@dataclass
class IntrinsicDimResult:
    """Mean ± std of TwoNN over repetitions, with what was measured."""

    mean: float
    std: float
    values: list[float]
    n_subset: int  # rows drawn from the input (before de-duplication)
    n_used: int  # distinct rows in the subset
    n_per_rep: int  # rows in each repetition
    n_duplicates: int
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def intrinsic_dimension(
    embeddings: np.ndarray,
    subset: float | int | None = 0.01,
    reps: int = 20,
    fraction: float = 0.9,
    seed: int = 0,
    normalize: bool = True,
    *,
    discard_fraction: float = 0.1,
    method: str = "fit",
    distance: str = "euclidean",
) -> IntrinsicDimResult:
    """The ReFO supplementary's protocol: TwoNN on `reps` random `fraction`-subsets of a fixed subset.

    embeddings: (N, d) array (a memmap is fine; only the subset is read).
    subset: a float in (0, 1] is a fraction of the rows (paper: 0.01 of MS1MV2, 58k points), an
        int ≥ 3 a row count, None all rows. Drawn once without replacement with `seed`, so every
        model measured with the same seed sees the same images.
    normalize: L2-normalise the rows first (the paper does). Exact duplicate rows are removed once,
        before the repetitions. Each repetition draws int(fraction · n_used) distinct rows and
        recomputes the neighbours inside them. Returns mean and population std over repetitions.
    """
    n = int(embeddings.shape[0]) if getattr(embeddings, "ndim", 0) == 2 else -1
    if n <= 0:
        raise ValueError(
            f"embeddings: expected a non-empty (N, d) array, got shape {getattr(embeddings, 'shape', None)}"
        )
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n_subset = _subset_size(subset, n)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=n_subset, replace=False)) if n_subset < n else np.arange(n)
    x = check_embeddings(np.asarray(embeddings[rows]), "embeddings", require_unit=normalize)
    unique, n_dup = deduplicate(x)
    n_rep = int(fraction * unique.shape[0])
    if n_rep < 3:
        raise ValueError(f"each repetition would use {n_rep} points (< 3): raise `subset` or `fraction`")
    values = []
    for _ in range(reps):
        pick = rng.choice(unique.shape[0], size=n_rep, replace=False) if n_rep < unique.shape[0] else slice(None)
        r1, r2 = two_nn_distances(unique[pick], distance=distance)
        values.append(fit_twonn(r2 / r1, discard_fraction, method))
    vals = np.asarray(values)
    params = dict(
        subset=subset,
        reps=reps,
        fraction=fraction,
        seed=seed,
        normalize=normalize,
        discard_fraction=discard_fraction,
        method=method,
        distance=distance,
    )
    return IntrinsicDimResult(
        float(vals.mean()),
        float(vals.std()),
        [float(v) for v in vals],
        n_subset,
        int(unique.shape[0]),
        n_rep,
        n_dup,
        params,
    )


def _subset_size(subset: float | int | None, n: int) -> int:
    if subset is None:
        return n
    if isinstance(subset, (bool, np.bool_)):
        raise ValueError(f"subset must be a fraction, a count or None, got {subset!r}")
    if isinstance(subset, (int, np.integer)):
        if subset < 3:
            raise ValueError(f"subset count must be >= 3, got {subset}")
        return min(int(subset), n)
    if not 0.0 < float(subset) <= 1.0:
        raise ValueError(f"subset fraction must be in (0, 1], got {subset}")
    return max(round(float(subset) * n), min(3, n))


def parse_subset(text: str) -> float | int:
    """CLI form of `subset`: "0.01" → fraction, "5000" → count, "1%" → 0.01."""
    t = text.strip()
    try:
        if t.endswith("%"):
            return float(t[:-1]) / 100.0
        if any(c in t for c in ".eE"):
            return float(t)
        return int(t)
    except ValueError:
        raise ValueError(
            f"--subset {text!r}: expected a fraction (0.01), a percentage (1%) or a row count (5000)"
        ) from None
