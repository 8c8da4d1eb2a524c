"""Density benchmark: float32 matmul peak, exact angular KDE at 10k/50k/100k, scikit-learn
KernelDensity at 10k/20k, kNN (FAISS IVF) at 100k against exact. Clustered synthetic embeddings, d=512.

    .venv/bin/python benchmarks/density.py            # the full table
    .venv/bin/python benchmarks/density.py --quick    # small sizes, for a smoke run
    .venv/bin/python benchmarks/density.py --skip-sklearn --large 1000000   # kNN at 1M rows too

Bars: exact ≥ 70 % of the matmul peak; ours ≥ 100× faster than sklearn at 20k; kNN ≥ 10× faster
than exact at 100k with median relative error ≤ 1e-3 and max ≤ 1e-2.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from facekd.bias.kde import kde_exact, kde_knn

D = 512
H = math.radians(12)


def clustered_embeddings(n: int, d: int = D, seed: int = 0, twins: float = 0.0, with_labels: bool = False):
    """Face-like clusters: long-tailed identity sizes (2..200, Zipf-like), per-identity spread with
    typical within-identity angles of 20-40°, 5 % 'hard' images with twice the spread. float32 (n, d).

    twins: the fraction of identities whose centre is moved to cosine 0.8 of another identity's
    (the same person under two labels, as in web-collected face sets); with_labels: also return
    the identity of each row, int64 (n,)."""
    rng = np.random.default_rng(seed)
    sizes = np.clip((rng.pareto(1.2, n) * 10 + 2).astype(int), 2, 200)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    labels = np.repeat(np.arange(sizes.size), sizes)[:n]
    centres = rng.standard_normal((sizes.size, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if twins > 0:
        tw = np.random.default_rng([seed, 1])
        moved = tw.choice(sizes.size, int(twins * sizes.size), replace=False)
        partner = tw.integers(0, sizes.size, moved.size)
        centres[moved] = 0.8 * centres[partner] + 0.6 * centres[moved]  # cos 0.8 (the two are ~orthogonal)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.3, 0.6, sizes.size)[labels] * np.where(rng.random(n) < 0.05, 2.0, 1.0)
    x = centres[labels] + spread[:, None] * rng.standard_normal((n, d)) / math.sqrt(d)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return (x, labels.astype(np.int64)) if with_labels else x


def matmul_peak(size: int = 4096, reps: int = 3) -> float:
    """Best-of-`reps` float32 square matmul rate (FLOP/s) of this machine with torch's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * size**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class _Rows(list):
    """Table rows, printed as soon as they are measured."""

    def append(self, row) -> None:
        name, n, t, rate, note = row
        print(f"{name:<28}{n:>8}{t:>10.2f}{rate:>10.0f}  {note}", flush=True)
        super().append(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run, bars not meaningful)")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--nlist", type=int, default=None, help="IVF cells (default N/100)")
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument(
        "--large",
        type=int,
        default=0,
        metavar="N",
        help="also run kNN at N rows, checked on 2,000 random rows against exact",
    )
    args = ap.parse_args()
    sizes = (2000, 5000, 10000) if args.quick else (10_000, 50_000, 100_000)
    sk_sizes = (1000, 2000) if args.quick else (10_000, 20_000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={D}, h=12deg, clustered embeddings")
    print(f"{'method':<28}{'N':>8}{'seconds':>10}{'emb/s':>10}  notes", flush=True)
    rows = _Rows()
    exact_times = {}
    data = {}
    for n in sizes:
        x = data.setdefault(n, clustered_embeddings(n))
        peak = matmul_peak()  # re-measured next to each run: the machine is shared
        t = _timed(lambda n=n, x=x: exact_times.__setitem__(n, kde_exact(x, H, progress=False)))
        exact_times[n] = (t, exact_times[n])
        rate = 2 * n * n * D / t
        rows.append(("exact", n, t, n / t, f"{rate / 1e9:.0f} GFLOP/s = {rate / peak:.0%} of {peak / 1e9:.0f}"))
    if not args.skip_sklearn:
        from sklearn.neighbors import KernelDensity

        chord_h = 2 * math.sin(H / 2)  # Euclidean chord of a 12° angle
        for n in sk_sizes:
            x = data.get(n) if n in data else clustered_embeddings(n)
            t_sk = _timed(lambda x=x: KernelDensity(bandwidth=chord_h).fit(x).score_samples(x))
            t_us = min(_timed(lambda x=x: kde_exact(x, H, progress=False)) for _ in range(2))
            rows.append(("sklearn KernelDensity", n, t_sk, n / t_sk, f"ours {t_us:.2f}s: {t_sk / t_us:.0f}x faster"))
    n = sizes[-1]
    x = data[n]
    t_ex, ref = exact_times[n]
    res = {}
    t = _timed(
        lambda: res.setdefault("r", kde_knn(x, H, index="ivf", nlist=args.nlist, nprobe=args.nprobe, progress=False))
    )
    rel = np.abs(res["r"].density - ref.density) / ref.density
    rows.append(
        (
            f"knn ivf nprobe={args.nprobe}",
            n,
            t,
            n / t,
            f"{t_ex / t:.1f}x vs exact; rel err median {np.median(rel):.1e} max {rel.max():.1e}",
        )
    )
    if args.large:
        n, check = args.large, 2000
        x = clustered_embeddings(n)
        x = x[np.random.default_rng(1).permutation(n)]  # rows 0..check-1 are then a random sample
        t = _timed(
            lambda: res.__setitem__(
                "r", kde_knn(x, H, index="ivf", nlist=args.nlist, nprobe=args.nprobe, progress=False)
            )
        )
        t_check = _timed(lambda: res.__setitem__("ref", kde_exact(x, H, rows=(0, check), progress=False)))
        rel = np.abs(res["r"].density[:check] - res["ref"].density) / res["ref"].density
        rows.append(
            (
                f"knn ivf nprobe={args.nprobe}",
                n,
                t,
                n / t,
                f"{t_check * n / check / t:.0f}x vs exact (its time extrapolated from {check} random rows); "
                f"rel err on them median {np.median(rel):.1e} max {rel.max():.1e}",
            )
        )


if __name__ == "__main__":
    main()
