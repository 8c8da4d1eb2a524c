"""Angular kernel density estimation on unit embeddings (Eq. 3, 8, 9 of "Rectifying the Data Bias").

For unit embeddings x_1..x_N, optional weights ω (a resampled list's counts, Eq. 9) and bandwidth h
(radians), the density at every dataset point is

    f̂_h(x_i) = (1/E) Σ_j ω_j K(θ_ij / h),   θ_ij = arccos(clamp(<x_i, x_j>, -1, 1)),   K(u) = exp(-u²/2)

Documented choices (the paper leaves them open):
- Self-inclusion (`include_self=True`, default): the sum of Eq. 3 runs over the whole training
  set, so x_i contributes ω_i·K(0) = ω_i to its own density (this keeps 1/f̂ finite for isolated
  points in Intrinsic Sampling). With `include_self=False` row i's own term is dropped exactly;
  duplicates of x_i stored in other rows still count.
- Normalisation E (`normalization`): "weights" (default) E = Σ_j ω_j (N without weights): f̂ is the
  weighted mean kernel value, in (0, 1]; "none": E = 1, the raw kernel sum. The sphere's Gaussian
  normalising constant is omitted: uniformity (Eq. 4, after normalising over the points) and the
  Intrinsic Sampling probabilities (Eq. 10) do not depend on a constant E.

Methods:
- "exact": chunked matrix products in torch (CPU threads or GPU). The kernel is evaluated only where
  cos θ > cos θ_cut with K(θ_cut/h) = `truncate_tol`/N; the skipped terms add up to at most
  `truncate_tol`·mean(ω) per point (reported as the bound). `truncate_tol=0` evaluates every pair.
  dtype "float32" (default), "float64" (the check path), and on GPU "tf32" / "bf16" for the matrix
  product (see docs/bias.md for their measured accuracy).
- "knn": truncated sums. index "flat": the k nearest neighbours from a FAISS IndexFlatIP; every
  excluded row has angle ≥ θ_(k) (the k-th neighbour's angle), so the truncated mass is at most
  (Σω − Σ_{j∈kNN} ω_j)·K(θ_(k)/h). index "ivf" (for millions of rows): FAISS spherical k-means
  cells; each point sums over the members of the `nprobe` cells nearest to it (batched GEMMs per
  cell), and points no cell represents sum among themselves by the same method, recursively,
  then exactly (`_kde_cells`).
- "auto": "exact" up to `AUTO_EXACT_MAX` rows on CPU (any N on a GPU), "knn" with IVF above.

Sharding: when torch.distributed is initialised (torchrun), the query rows are split across ranks
(facekd.dist.shard_range), each rank holds all embeddings as the reference set, and the densities
are all-gathered, so every rank returns the full (N,) result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from facekd import dist
from facekd.bias.blocks import Reference, auto_device, plan_blocks
from facekd.bias.cells import identity_cells
from facekd.bias.shortlist import BF16_COS_ERROR, Shortlist
from facekd.utils import check_embeddings

__all__ = [
    "AUTO_EXACT_MAX",
    "DensityOptions",
    "KDEResult",
    "angular_kde",
    "kde_exact",
    "kde_knn",
    "kernel",
    "list_weights",
    "resolve_method",
]

AUTO_EXACT_MAX = 300_000
CELLS_MIN_ROWS = 4096  # below this, the unrepresented points of the cell path are summed exactly
_DTYPES = ("float32", "float64", "tf32", "bf16")


@dataclass
class KDEResult:
    """Densities f̂_h(x_i) (float64 (N,)) and a per-point upper bound of the mass left out (same units)."""

    density: np.ndarray
    truncation_bound: np.ndarray
    method: str
    bandwidth: float
    normalizer: float


def kernel(theta: torch.Tensor | np.ndarray, bandwidth: float):
    """Gaussian kernel on the angle: K(θ/h) = exp(-θ²/(2h²)); θ and h in radians."""
    if isinstance(theta, torch.Tensor):
        return torch.exp(-(theta * theta) / (2.0 * bandwidth * bandwidth))
    return np.exp(-(np.asarray(theta) ** 2) / (2.0 * bandwidth * bandwidth))


def list_weights(samples: np.ndarray, n: int) -> np.ndarray:
    """Weights ω of Eq. 9 for a sample list: how many times each of the n rows is drawn. float64 (n,)."""
    samples = np.asarray(samples)
    if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.integer):
        raise ValueError(f"sample list: expected a 1-D integer array, got {samples.dtype} {samples.shape}")
    if samples.size and (samples.min() < 0 or samples.max() >= n):
        raise ValueError(f"sample list: indices must lie in [0, {n}), got range [{samples.min()}, {samples.max()}]")
    return np.bincount(samples, minlength=n).astype(np.float64)


def _check_inputs(embeddings, bandwidth, weights, float64: bool = False):
    x = check_embeddings(embeddings, "embeddings", require_unit=True)
    if float64:  # the check path keeps the caller's precision
        x = np.asarray(embeddings, dtype=np.float64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive angle in radians, got {bandwidth!r}")
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (x.shape[0],):
            raise ValueError(f"weights: expected shape ({x.shape[0]},) (one per embedding), got {w.shape}")
        if not np.isfinite(w).all():
            raise ValueError(f"weights: {int((~np.isfinite(w)).sum())} values are NaN or inf")
        if (w < 0).any():
            bad = np.flatnonzero(w < 0)
            raise ValueError(f"weights: {bad.size} negative values (first rows: {bad[:5].tolist()})")
        if w.sum() <= 0:
            raise ValueError("weights: all zero")
        weights = w
    return x, float(bandwidth), weights


def _normalizer(normalization: str, n: int, weights) -> float:
    if normalization == "weights":
        return float(n if weights is None else weights.sum())
    if normalization == "none":
        return 1.0
    raise ValueError(f"normalization must be 'weights' or 'none', got {normalization!r}")


def _cos_cut(bandwidth: float, truncate_tol: float, n: int) -> float:
    """cos θ_cut with K(θ_cut/h) = truncate_tol / n; -1 (nothing skipped) when tol is 0."""
    if truncate_tol < 0:
        raise ValueError(f"truncate_tol must be >= 0, got {truncate_tol}")
    if truncate_tol == 0:
        return -1.0
    theta = bandwidth * math.sqrt(2.0 * math.log(n / truncate_tol)) if truncate_tol < n else 0.0
    return math.cos(theta) if theta < math.pi else -1.0


def kde_exact(
    embeddings,
    bandwidth: float,
    weights=None,
    *,
    include_self: bool = True,
    normalization: str = "weights",
    truncate_tol: float = 1e-4,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    chunk_bytes: int | None = None,
    memory_bytes: int | None = None,
    epilogue: str | None = None,
    rows: tuple[int, int] | None = None,
    progress: bool = True,
) -> KDEResult:
    """Exact blocked angular KDE at the dataset points (see module docstring). (N, d) -> KDEResult.

    `rows=(start, stop)` evaluates only those query rows (used by sharding); the reference set is
    always all N rows. The returned arrays then have stop-start entries. chunk_bytes / memory_bytes:
    the product block and the device memory budget (facekd.bias.blocks.plan_blocks; defaults: 256
    MiB blocks on the CPU, sized from the free memory on CUDA). epilogue (cosines → kernel sums):
    "sparse" (CPU default) skips pairs below the cut; "dense" (CUDA default: skipping needs a host
    sync and saves nothing there) evaluates every pair in place, so the bound is 0; "compiled" is
    "dense" as one kernel generated by torch.compile, which reads each block once instead of six
    times (not yet measured against "dense" on a GPU: benchmarks/gpu_density.py compares them).
    """
    x, h, w = _check_inputs(embeddings, bandwidth, weights, float64=dtype == "float64")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    device = torch.device(device)
    if dtype in ("tf32", "bf16") and device.type != "cuda":
        raise ValueError(f"dtype {dtype!r} is a GPU option; use float32 or float64 on {device}")
    n = x.shape[0]
    start, stop = rows if rows is not None else (0, n)
    E = _normalizer(normalization, n, w)
    epilogue = epilogue or ("dense" if device.type == "cuda" else "sparse")
    if epilogue not in _EPILOGUES:
        raise ValueError(f"epilogue must be one of {_EPILOGUES}, got {epilogue!r}")
    c_cut = -1.0 if epilogue != "sparse" else _cos_cut(h, truncate_tol, n)
    k_cut = float(kernel(np.arccos(c_cut), h)) if c_cut > -1 else 0.0

    fdt = torch.float64 if dtype == "float64" else torch.float32
    ref = torch.from_numpy(x).to(torch.bfloat16 if dtype == "bf16" else fdt)
    wt = None if w is None else torch.from_numpy(w).to(dtype=fdt)
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        out = _exact_row_sums(
            ref,
            start,
            stop,
            h,
            c_cut,
            wt,
            device=device,
            chunk_bytes=chunk_bytes,
            memory_bytes=memory_bytes,
            epilogue=epilogue,
            progress=progress,
            desc="kde exact",
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    if not include_self:
        out -= 1.0 if wt is None else wt[start:stop].to(device=out.device, dtype=torch.float64)
    density = out.cpu().numpy().clip(min=0.0) / E
    total_w = float(n if w is None else w.sum())
    bound = np.full(stop - start, k_cut * total_w / E)
    return KDEResult(density, bound, "exact", h, E)


def _exact_row_sums(
    ref: torch.Tensor,
    start: int,
    stop: int,
    h: float,
    c_cut: float,
    w: torch.Tensor | None,
    *,
    device: torch.device | None = None,
    chunk_bytes: int | None = None,
    memory_bytes: int | None = None,
    epilogue: str = "sparse",
    progress: bool = False,
    desc: str = "kde exact",
) -> torch.Tensor:
    """Σ_j w_j K(θ_ij/h) over all M rows j of `ref` (M, d, host) for query rows i in [start, stop),
    the self term exact (cos θ_ii := 1). Products in ref's dtype (float32 / float64 / bf16 with
    float32 cosines), in the blocks of facekd.bias.blocks.plan_blocks, summed on `device` (default:
    ref's) without a host sync. Returns float64 (stop-start,) on that device."""
    device = ref.device if device is None else torch.device(device)
    fdt = torch.float64 if ref.dtype == torch.float64 else torch.float32
    m, d = ref.shape
    plan = plan_blocks(
        stop - start,
        m,
        d,
        ref_bytes_per_value=ref.element_size(),
        block_bytes_per_value=torch.finfo(fdt).bits // 8,
        device=device,
        chunk_bytes=chunk_bytes,
        memory_bytes=memory_bytes,
    )
    reference = Reference(ref, plan, device, ref.dtype)
    out = torch.zeros(stop - start, dtype=torch.float64, device=device)
    # One preallocated block reused by every CPU product: a fresh (chunk, M) tensor per block costs
    # page faults that measured ~20 % of the matrix-product time on CPU (benchmarks/density.py).
    # bf16 on CUDA writes float32 cosines instead (cuBLAS sums in float32 either way): rounding the
    # cosine to bf16 raised the worst density error from 9e-3 to 1.6e-2 (benchmarks/density_precision.py).
    fp32_out = ref.dtype == torch.bfloat16 and device.type == "cuda"
    block = None if fp32_out else torch.empty((plan.query_rows, plan.ref_rows), dtype=ref.dtype, device=device)
    w = None if w is None else w.to(device=device)
    steps = -(-(stop - start) // plan.query_rows) * -(-m // plan.ref_rows)
    bar = tqdm(total=steps, desc=desc, unit="block", disable=not progress or not dist.is_main())
    for g0, queries in reference.query_groups(start, stop):
        for r0, refs in reference.blocks():
            r1 = r0 + refs.shape[0]
            for s in range(g0, g0 + queries.shape[0], plan.query_rows):
                e = min(s + plan.query_rows, g0 + queries.shape[0])
                q = queries[s - g0 : e - g0]
                if block is None:  # bf16 on CUDA: float32 cosines
                    c = torch.mm(q, refs.T, out_dtype=torch.float32)
                else:
                    c = torch.mm(q, refs.T, out=block[: e - s, : r1 - r0]).to(fdt)
                lo, hi = max(s, r0), min(e, r1)
                if hi > lo:  # the self term is exact: cos θ_ii := 1
                    diag = torch.arange(lo, hi, device=device)
                    c[diag - s, diag - r0] = 1.0
                out[s - start : e - start] += _block_sums(c, h, c_cut, None if w is None else w[r0:r1], epilogue)
                bar.update()
    bar.close()
    return out


def _block_sums(c: torch.Tensor, h: float, c_cut: float, w: torch.Tensor | None, epilogue: str = "sparse"):
    """Row sums Σ_j w_j K(arccos(c_ij)/h) of a cosine block (float64 (rows,)); `c` may be overwritten.

    sparse (CPU default): entries with c ≤ c_cut are skipped without evaluating arccos / exp (one
    compare pass instead). dense: every entry, in place and without a host sync (the GPU path).
    compiled: dense, fused by torch.compile."""
    acc = torch.float64
    if epilogue == "compiled":
        return _compiled_dense_sums()(c, -0.5 / (h * h), w)
    if epilogue == "dense":
        kv = c.clamp_(-1.0, 1.0).acos_().square_().mul_(-0.5 / (h * h)).exp_()
        return kv.sum(1, dtype=acc) if w is None else (kv @ w.to(kv.dtype)).to(acc)
    if c_cut > -1:
        ri, ci = (c > c_cut).nonzero(as_tuple=True)
        kv = kernel(torch.arccos(c[ri, ci].clamp_(-1.0, 1.0)), h)
        if w is not None:
            kv = kv * w[ci]
        return torch.zeros(c.shape[0], dtype=acc, device=c.device).index_add_(0, ri, kv.to(acc))
    kv = kernel(torch.arccos(c.clamp_(-1.0, 1.0)), h).to(acc)
    return kv @ w.to(acc) if w is not None else kv.sum(1)


_EPILOGUES = ("sparse", "dense", "compiled")
_COMPILED: list = []


def _dense_sums(c: torch.Tensor, scale: float, w: torch.Tensor | None) -> torch.Tensor:
    kv = torch.exp(torch.acos(c.clamp(-1.0, 1.0)).square() * scale)
    return kv.sum(1, dtype=torch.float64) if w is None else (kv @ w.to(kv.dtype)).to(torch.float64)


def _compiled_dense_sums():
    """`_dense_sums` compiled once per process (dynamic shapes: the last blocks are smaller)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_dense_sums, dynamic=True))
    return _COMPILED[0]


def default_nlist(n: int) -> int:
    """IVF cells for N rows: one per 100 rows. A centroid represents an identity only while its
    cell holds few identities, so cells must grow with the identity count, i.e. with N: with 3·√N
    cells, 44 % of the benchmark's points were unrepresented at 1M rows, with N/100 20 %."""
    return max(1, min(n, round(n / 100)))


def default_refine_cos(nlist: int, d: int) -> float:
    """Twice the cosine a random unit direction reaches to its best of `nlist` random centroids in
    d dimensions, √(2 ln nlist / d): a point below it is not represented by any cell."""
    return min(1.0, 2.0 * math.sqrt(2.0 * math.log(max(nlist, 2)) / d))


def _kde_cells(x, h, wv, start, stop, nlist, nprobe, refine_cos, seed, c_cut, chunk_bytes, progress):
    """Truncated sums on FAISS spherical k-means cells, all in GEMMs. Returns (sums, bound), float64
    (stop-start,) each, in kernel-sum units with the self term included.

    0. Cells: spherical k-means (5 iterations) on a sample of 16 points per cell, trained once
       (rank 0) and shared with every rank.
    1. Each point probes the `nprobe` cells whose centroids have the largest cosine to it (its own
       cell first; a matrix product with every centroid: under torchrun each rank does its share
       of the points and the probes are all-gathered). Queries are grouped by probed cell, so each
       cell costs one GEMM of its queries against its members: N·nprobe·(N/nlist)·d
       multiply-adds in all.
    2. A point whose best centroid cosine is below `refine_cos` is "unrepresented": no cell follows
       its identity (small identities are spread over cells at random), so cells miss its
       neighbours. Pairs of unrepresented points are summed by the same method applied to them
       alone (their own cells; recursively), or exactly once fewer than CELLS_MIN_ROWS are
       left or they are more than half of the rows. They meet represented points through step 1.
    Bound: an excluded cell's centroid is at angle ≥ θ_(nprobe) (the last probed) from the point,
    and its members lie within the largest cell radius R of their centroid, so the missed mass is
    ≤ W_excluded·K(max(0, θ_(nprobe) − R)/h). Rigorous, but loose in high dimension, where cell
    radii are wide; benchmarks/density.py measures the real error against exact.
    The k-means, the assignment and step 2 grow as N² (with small constants): with identity
    labels, `_kde_identity_cells` is the method that grows linearly.
    """
    n, d = x.shape
    nlist = max(1, min(n, nlist or default_nlist(n)))
    p = min(nprobe, nlist)
    refine_cos = default_refine_cos(nlist, d) if refine_cos is None else refine_cos
    top, probes = _probe_cells(x, _train_cells(x, nlist, seed), p, chunk_bytes)
    flag = top[:, 0] < refine_cos
    out = _cell_sums(x, h, wv, start, stop, probes, flag, nlist, c_cut, progress)

    unrep = np.flatnonzero(flag)
    a, b = (int(i) for i in np.searchsorted(unrep, [start, stop]))
    unrep_bound = np.zeros(stop - start)
    joined = b > a or dist.world_size() > 1  # under torchrun every rank joins the collectives below
    if joined and CELLS_MIN_ROWS <= unrep.size <= n // 2:  # recurse: their own cells find most of their pairs
        sums, unrep_bound[unrep[a:b] - start] = _kde_cells(
            x[unrep], h, wv[unrep], a, b, None, nprobe, refine_cos, seed, c_cut, chunk_bytes, progress
        )
        out[torch.from_numpy(unrep[a:b] - start)] += torch.from_numpy(sums)
    elif b > a:
        out[torch.from_numpy(unrep[a:b] - start)] += _exact_row_sums(
            torch.from_numpy(x[unrep]),
            a,
            b,
            h,
            c_cut,
            torch.from_numpy(wv[unrep]),
            chunk_bytes=chunk_bytes,
            progress=progress,
            desc="kde knn (unrepresented, exact)",
        )
    return out.numpy(), _cells_bound(h, wv, start, stop, top, probes, flag, nlist) + unrep_bound


def _train_cells(x: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids float32 (nlist, d): trained on rank 0, broadcast to every rank."""
    import faiss

    d = x.shape[1]
    cent: np.ndarray = np.zeros((nlist, d), np.float32)
    if dist.is_main():
        km = faiss.Kmeans(
            d,
            nlist,
            niter=5,
            seed=seed,
            spherical=True,
            min_points_per_centroid=1,
            max_points_per_centroid=16,
            verbose=False,
        )
        km.train(x)
        cent = np.asarray(km.centroids, np.float32)
    if dist.world_size() > 1:
        t = torch.from_numpy(np.ascontiguousarray(cent)).to(_collective_device())
        torch.distributed.broadcast(t, 0)
        cent = t.cpu().numpy()
    return cent


def _collective_device() -> torch.device:
    nccl = torch.distributed.get_backend() == "nccl"
    return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")


def _probe_cells(x: np.ndarray, cent: np.ndarray, p: int, chunk_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row, the cosines (float64) and ids (int64) of its `p` nearest centroids, best first:
    (N, p) each. Each rank computes its share of rows; the shares are all-gathered."""
    s0, s1 = dist.shard_range(x.shape[0])
    nlist = cent.shape[0]
    xt, ct = torch.from_numpy(x), torch.from_numpy(cent)
    top_t, probes_t = torch.empty(s1 - s0, p), torch.empty(s1 - s0, p, dtype=torch.long)
    step = max(1, chunk_bytes // (4 * nlist))
    for s in range(s0, s1, step):
        e = min(s + step, s1)
        top_t[s - s0 : e - s0], probes_t[s - s0 : e - s0] = torch.topk(xt[s:e] @ ct.T, p, dim=1)
    top, probes = top_t.numpy(), probes_t.numpy()
    both = np.concatenate([top.astype(np.float64), probes.astype(np.float64)], 1)
    if dist.world_size() > 1:
        both = dist.all_gather_cat(torch.from_numpy(both).to(_collective_device())).cpu().numpy()
    return both[:, :p], both[:, p:].astype(np.int64)


def _cell_sums(x, h, wv, start, stop, probes, flag, nlist, c_cut, progress) -> torch.Tensor:
    """Step 1 of `_kde_cells` for query rows [start, stop): float64 (stop-start,) kernel sums."""
    assign = probes[:, 0]
    p = probes.shape[1]
    # members grouped by cell, represented first; queries grouped by probed cell, represented first
    order = np.lexsort((flag, assign))
    cell_start = np.searchsorted(assign[order], np.arange(nlist + 1))
    cell_split = cell_start[:-1] + np.bincount(assign, weights=~flag, minlength=nlist).astype(np.int64)
    q_all = np.repeat(np.arange(start, stop), p)
    q_cell = probes[start:stop].ravel()
    q_order = np.lexsort((flag[q_all], q_cell))
    q_all, q_cell = q_all[q_order], q_cell[q_order]
    q_start = np.searchsorted(q_cell, np.arange(nlist + 1))
    q_split = q_start[:-1] + np.bincount(q_cell, weights=~flag[q_all], minlength=nlist).astype(np.int64)

    xt, wt = torch.from_numpy(x), torch.from_numpy(wv)
    out = torch.zeros(stop - start, dtype=torch.float64)
    for c in tqdm(range(nlist), desc="kde knn (ivf cells)", disable=not progress or not dist.is_main()):
        members = order[cell_start[c] : cell_start[c + 1]]
        represented = members[: cell_split[c] - cell_start[c]]  # sorted: the self positions are found by search
        q = q_all[q_start[c] : q_split[c]]  # represented queries meet every member
        if q.size and members.size:
            cos = xt[torch.from_numpy(q)] @ xt[torch.from_numpy(members)].T
            own = np.flatnonzero(assign[q] == c)
            cos[torch.from_numpy(own), torch.from_numpy(np.searchsorted(represented, q[own]))] = 1.0
            out.index_add_(0, torch.from_numpy(q - start), _block_sums(cos, h, c_cut, wt[members]))
        q = q_all[q_split[c] : q_start[c + 1]]  # unrepresented ones only the represented (the rest: step 2)
        if q.size and represented.size:
            cos = xt[torch.from_numpy(q)] @ xt[torch.from_numpy(represented)].T
            out.index_add_(0, torch.from_numpy(q - start), _block_sums(cos, h, c_cut, wt[represented]))
    return out


def _cells_bound(h, wv, start, stop, top, probes, flag, nlist) -> np.ndarray:
    """The bound of `_kde_cells` for rows [start, stop): represented points miss excluded cells'
    members, unrepresented ones only their represented members (the pairs among them carry the
    bound of step 2); R from each member's angle to its centroid."""
    assign = probes[:, 0]
    radius_all = float(np.arccos(np.clip(top[:, 0].min(), -1, 1)))
    radius_rep = float(np.arccos(np.clip(top[~flag, 0].min(initial=1.0), -1, 1)))
    cell_w = np.bincount(assign, weights=wv, minlength=nlist)
    cell_w_rep = np.bincount(assign, weights=wv * ~flag, minlength=nlist)
    fq = flag[start:stop]
    excluded_w = np.where(
        fq, cell_w_rep.sum() - cell_w_rep[probes[start:stop]].sum(1), cell_w.sum() - cell_w[probes[start:stop]].sum(1)
    )
    theta_p = np.arccos(np.clip(top[start:stop, -1], -1, 1))
    gap = np.clip(theta_p - np.where(fq, radius_rep, radius_all), 0.0, None)
    return np.clip(excluded_w, 0.0, None) * kernel(gap, h)


def _kde_identity_cells(x, labels, h, wv, start, stop, nprobe, c_cut, cell_max, seed, progress):
    """Truncated sums over cells that follow the identities (`facekd.bias.cells`). Returns (sums,
    bound), float64 (stop-start,) each, in kernel-sum units with the self term included.

    Each point sums exactly over the rows of its own cell and of the `nprobe` − 1 cells whose mean
    directions are nearest to its cell's (the cell graph, `_near_cells`): one GEMM per cell, of the
    cell's query rows against those cells' rows. A point's kernel mass comes from its identity
    and from identities close to it (near-duplicate identities, the same person under two labels);
    the rest lies at ~90° in 512-d and weighs ~1e-13 per row at h = 12°. Per point that is about
    nprobe × (rows per identity) products, independent of N; every point belongs to a cell, so
    no point needs the exact fallback of the k-means cells (`_kde_cells`).
    Bound: an excluded cell's direction is at angle ≥ θ_p (the farthest probed cell) from the
    point's cell direction, so its rows are at ≥ θ_p − θ(x, own direction) − R from x (R: the
    largest angle of a row to its cell direction); the missed mass is ≤ W_excluded·K(that/h).
    Rigorous while the cell graph is a dense product (up to EXACT_CELLS cells), an estimate above.
    """
    cells = identity_cells(x, labels, cell_max, seed)
    p = min(nprobe, cells.count)
    dirs = cells.means / np.linalg.norm(cells.means, axis=1, keepdims=True)
    near, near_cos, offset = _near_cells(dirs, p)
    own_cos = np.clip(np.einsum("nd,nd->n", x, dirs[cells.cell]), -1.0, 1.0)
    xt, wt = torch.from_numpy(x), torch.from_numpy(wv)
    out = torch.zeros(stop - start, dtype=torch.float64)
    q_cells = np.unique(cells.cell[start:stop])
    for c in tqdm(q_cells, desc="kde knn (identity cells)", disable=not progress or not dist.is_main()):
        own = cells.members(c)
        q = own[(own >= start) & (own < stop)]
        cand = np.concatenate([cells.members(int(k)) for k in dict.fromkeys(near[c])])  # own cell first
        cos = xt[torch.from_numpy(q)] @ xt[torch.from_numpy(cand)].T
        cos[torch.arange(q.size), torch.from_numpy(np.searchsorted(own, q))] = 1.0  # the self term is exact
        out.index_add_(0, torch.from_numpy(q - start), _block_sums(cos, h, c_cut, wt[cand]))
    cell_w = np.bincount(cells.cell, weights=wv, minlength=cells.count)
    rows_cell = cells.cell[start:stop]
    excluded_w = cell_w.sum() - cell_w[near].sum(1)[rows_cell]
    radius = float(np.arccos(own_cos.min()))
    farthest = np.clip(near_cos[rows_cell, -1] + offset, -1, 1)
    gap = np.arccos(farthest) - np.arccos(own_cos[start:stop]) - radius
    return out.numpy(), np.clip(excluded_w, 0.0, None) * kernel(np.clip(gap, 0.0, None), h)


EXACT_CELLS = 262_144  # up to this many cells the cell graph is a dense product (Shortlist)


def _near_cells(dirs: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray, float]:
    """For each of the C unit cell directions (C, d), itself and its p − 1 nearest others, nearest
    first: ids int64 (C, p), float64 cosines (C, p), and the cosine every other cell stays below,
    as an offset to the last column (0 when the ranking is exact).

    Up to EXACT_CELLS cells the ranking is a dense product (`facekd.bias.shortlist.Shortlist`; in
    bf16 a cell outside the list may exceed the p-th cosine by up to 2·BF16_COS_ERROR, hence the
    offset), and the listed cosines are recomputed in float64. Above, a FAISS HNSW graph over the
    directions (about log C per cell: the close pairs that matter are what a graph search finds
    reliably, but the bound is then an estimate). The dense product is quadratic in C; at 20,800
    cells (d = 512, one thread) it took 2.2 s in bf16 where the graph took 29 s (build 8 s, search
    21 s), and the graph's C log C catches up only near EXACT_CELLS.
    Under torchrun each rank ranks its share of the cells and the results are all-gathered."""
    import faiss

    c, d = dirs.shape
    s0, s1 = dist.shard_range(c)
    offset = 0.0
    if c > EXACT_CELLS:
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = max(128, 4 * p)
        hnsw.add(dirs)
        ids = hnsw.search(dirs[s0:s1], p)[1]
        ids = np.where(ids < 0, np.arange(s0, s1)[:, None], ids)
    else:
        shortlist = Shortlist(dirs)
        ids = shortlist.search(dirs[s0:s1], p)
        offset = 2 * BF16_COS_ERROR if shortlist.dtype == "bf16" else 0.0
    ids, cos = _self_first_by_cosine(dirs, ids, s0)
    if dist.world_size() > 1:
        local = torch.from_numpy(np.concatenate([cos, ids.astype(np.float64)], 1)).to(_collective_device())
        both = dist.all_gather_cat(local).cpu().numpy()
        cos, ids = both[:, :p], both[:, p:].astype(np.int64)
    return ids, cos, offset


def _self_first_by_cosine(dirs: np.ndarray, ids: np.ndarray, s0: int) -> tuple[np.ndarray, np.ndarray]:
    """ids (q, p) of the cells s0.. reordered: the cell itself first (in place of the farthest entry
    if the search left it out), then the others by decreasing cosine; with their float64 cosines
    (q, p), the first 1."""
    own = np.arange(s0, s0 + ids.shape[0])
    missing = ~(ids == own[:, None]).any(1)
    ids[missing, -1] = own[missing]
    cos = np.einsum("qd,qpd->qp", dirs[own].astype(np.float64), dirs[ids].astype(np.float64))
    cos[ids == own[:, None]] = np.inf
    order = np.argsort(-cos, axis=1, kind="stable")
    cos = np.take_along_axis(cos, order, 1)
    cos[np.isinf(cos)] = 1.0  # the cell itself
    return np.take_along_axis(ids, order, 1), cos


def kde_knn(
    embeddings,
    bandwidth: float,
    weights=None,
    *,
    k: int = 256,
    index: str = "flat",
    labels=None,
    nlist: int | None = None,
    nprobe: int = 8,
    refine_cos: float | None = None,
    cell_max: int = 256,
    truncate_tol: float = 1e-4,
    include_self: bool = True,
    normalization: str = "weights",
    rows: tuple[int, int] | None = None,
    batch: int = 16384,
    chunk_bytes: int = 256 << 20,
    seed: int = 0,
    progress: bool = True,
) -> KDEResult:
    """Truncated angular KDE (see module docstring). Returns densities and a per-point bound.

    index "flat": the k nearest neighbours from a FAISS IndexFlatIP (exact neighbours); bound
    (Σω − Σ_{kNN} ω)·K(θ_(k)/h). index "ivf" with `labels` (N,) (identity per row): each point
    sums over the rows of its identity's cell and of the `nprobe` − 1 cells nearest to it (cells of
    at most `cell_max` rows; `_kde_identity_cells`), linear in N. index "ivf" without labels: each
    point sums over the members of the `nprobe` cells (of `nlist`, default N/100, FAISS spherical
    k-means) nearest to it; points whose best centroid cosine is below `refine_cos` (default
    `default_refine_cos`) sum among themselves (`_kde_cells`), quadratic with small constants.
    FAISS's own IndexIVFFlat scans lists query by query without BLAS, which measured barely faster
    than the exact path here; batching the queries of a cell keeps the work in GEMMs.
    """
    x, h, w = _check_inputs(embeddings, bandwidth, weights)
    n = x.shape[0]
    start, stop = rows if rows is not None else (0, n)
    E = _normalizer(normalization, n, w)
    wv = np.ones(n) if w is None else w
    if index == "ivf":
        c_cut = _cos_cut(h, truncate_tol, n)
        if labels is not None:
            name = "knn-identity"
            density, bound = _kde_identity_cells(x, labels, h, wv, start, stop, nprobe, c_cut, cell_max, seed, progress)
        else:
            name = "knn-ivf"
            cells = (nlist, nprobe, refine_cos, seed, c_cut, chunk_bytes, progress)
            density, bound = _kde_cells(x, h, wv, start, stop, *cells)
        if not include_self:
            density -= wv[start:stop]
        bound += 0.0 if c_cut <= -1 else float(kernel(np.arccos(c_cut), h)) * float(wv.sum())
        return KDEResult(density / E, bound / E, name, h, E)
    if index != "flat":
        raise ValueError(f"knn index must be 'flat' or 'ivf', got {index!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    density, bound = _kde_flat(x, h, wv, min(k, n), start, stop, include_self, batch, progress)
    return KDEResult(density / E, bound / E, "knn-flat", h, E)


def _kde_flat(x, h, wv, k, start, stop, include_self, batch, progress) -> tuple[np.ndarray, np.ndarray]:
    """Sums over the k exact nearest neighbours (FAISS IndexFlatIP) of rows [start, stop), with
    the bound (Σω − Σ_{kNN} ω)·K(θ_(k)/h); kernel-sum units, float64 (stop-start,) each."""
    import faiss

    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(x)
    total_w = float(wv.sum())
    density = np.empty(stop - start)
    bound = np.empty(stop - start)
    bar = tqdm(
        range(start, stop, batch), desc="kde knn (flat)", unit="batch", disable=not progress or not dist.is_main()
    )
    for s in bar:
        e = min(s + batch, stop)
        sims, nbr = idx.search(x[s:e], k)
        valid = nbr >= 0
        nbr_c = np.where(valid, nbr, 0)
        is_self = (nbr_c == np.arange(s, e)[:, None]) & valid
        theta = np.arccos(np.clip(sims.astype(np.float64), -1.0, 1.0))
        theta[is_self] = 0.0
        kv = kernel(theta, h) * wv[nbr_c] * valid
        self_found = is_self.any(1)
        if include_self:
            kv[is_self] = wv[nbr_c][is_self]
        else:
            kv[is_self] = 0.0
        dens = kv.sum(1)
        if include_self:  # the self term belongs to Eq. 3 even when the search did not return row i
            dens[~self_found] += wv[s:e][~self_found]
        found_w = (wv[nbr_c] * valid).sum(1) + np.where(self_found, 0.0, wv[s:e])
        theta_k = np.where(valid.any(1), theta.max(1, where=valid, initial=0.0), 0.0)
        density[s - start : e - start] = dens
        bound[s - start : e - start] = np.clip(total_w - found_w, 0.0, None) * kernel(theta_k, h)
    return density, bound


def resolve_method(method: str, n: int, device: str | torch.device = "cpu") -> str:
    """The method "auto" stands for: "exact" on a GPU or up to AUTO_EXACT_MAX rows, else "knn"."""
    if method == "auto":
        return "exact" if torch.device(device).type == "cuda" or n <= AUTO_EXACT_MAX else "knn"
    if method not in ("exact", "knn"):
        raise ValueError(f"method must be 'exact', 'knn' or 'auto', got {method!r}")
    return method


class DensityOptions(BaseModel):
    """How densities are computed: one schema for `facekd density` and the `density:` block of the
    intrinsic sampler. Fields that the chosen method does not use are ignored; `index` defaults to
    "ivf" when "auto" picks knn (millions of rows) and to "flat" when knn is asked for."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["auto", "exact", "knn"] = "auto"
    device: str = Field("auto", description="exact: torch device; auto: CUDA when available, else cpu")
    dtype: Literal["auto", "float32", "float64", "tf32", "bf16"] = Field(
        "auto", description="exact: products; auto: tf32 on CUDA, float32 on the CPU"
    )
    truncate_tol: float = Field(1e-4, ge=0)
    k: int = Field(256, ge=1, strict=True, description="knn flat: neighbours per point")
    index: Literal["flat", "ivf"] | None = None
    nlist: int | None = Field(None, ge=1, strict=True, description="knn ivf: cells (default N/100)")
    nprobe: int = Field(8, ge=1, strict=True, description="knn ivf: cells each point sums over")
    cells: Literal["identity", "kmeans"] = Field("identity", description="knn ivf: identity cells (needs labels)")
    refine_cos: float | None = Field(None, ge=-1, le=1, description="knn ivf, k-means cells: see _kde_cells")
    cell_max: int = Field(256, ge=1, strict=True, description="knn ivf, identity cells: rows per cell at most")

    def resolved(self, n: int) -> dict:
        """method and the options that apply to it, as `angular_kde` keywords (JSON data)."""
        device = auto_device(self.device)
        method = resolve_method(self.method, n, device)
        if method == "exact":
            dtype = self.dtype if self.dtype != "auto" else "tf32" if device.type == "cuda" else "float32"
            return {"method": method, "device": str(device), "dtype": dtype, "truncate_tol": self.truncate_tol}
        index = self.index or ("ivf" if self.method == "auto" else "flat")
        out: dict = {"method": method, "index": index, "truncate_tol": self.truncate_tol}
        if index == "flat":
            return {**out, "k": self.k}
        if self.cells == "identity":
            return {**out, "cells": "identity", "nprobe": self.nprobe, "cell_max": self.cell_max}
        return {**out, "cells": "kmeans", "nlist": self.nlist, "nprobe": self.nprobe, "refine_cos": self.refine_cos}

    def kwargs(self, n: int, labels=None) -> dict:
        """`angular_kde` keywords for N rows with identity `labels` (N,) (needed by knn ivf with
        identity cells, the default: linear in N; k-means cells grow as N²)."""
        out = self.resolved(n)
        if out.pop("cells", None) == "identity":
            if labels is None:
                raise ValueError("density knn ivf with identity cells needs the labels (or cells: kmeans)")
            out["labels"] = np.asarray(labels)
        return out


def angular_kde(
    embeddings,
    bandwidth: float,
    weights=None,
    method: str = "auto",
    *,
    return_result: bool = False,
    **options,
):
    """Angular KDE f̂_h at each of the N dataset points (Eq. 3 with D of Eq. 8; weights ω: Eq. 9).

    embeddings: (N, d) (L2-normalised here), bandwidth: radians, weights: (N,) non-negative or None.
    method: "exact" | "knn" | "auto". `options` go to `kde_exact` / `kde_knn`. Returns float64 (N,)
    densities, or the full KDEResult (with the per-point truncation bound) if `return_result`.
    Under torchrun the query rows are sharded across ranks and the result all-gathered.
    """
    n = int(np.shape(embeddings)[0]) if np.ndim(embeddings) == 2 else 0
    if method == "auto" and resolve_method(method, n, options.get("device", "cpu")) == "knn":
        options.setdefault("index", "ivf")
    method = resolve_method(method, n, options.get("device", "cpu"))
    fn = kde_exact if method == "exact" else kde_knn
    if dist.world_size() > 1 and n > 0:
        options["rows"] = dist.shard_range(n)
        res = fn(embeddings, bandwidth, weights, **options)
        dev = torch.device(options.get("device", "cpu"))
        both = torch.from_numpy(np.stack([res.density, res.truncation_bound], 1)).to(dev)
        gathered = dist.all_gather_cat(both).cpu().numpy()
        res = KDEResult(gathered[:, 0].copy(), gathered[:, 1].copy(), res.method, res.bandwidth, res.normalizer)
    else:
        res = fn(embeddings, bandwidth, weights, **options)
    return res if return_result else res.density
