"""Person re-ID ranking metrics (Market-1501 protocol) and Recall@K retrieval.

`evaluate_reid` reproduces fast-reid's `eval_market1501` / reid-strong-baseline's `eval_func`
(face-ecosystem.md §3): rank the gallery by distance, drop gallery items with the query's pid
*and* camera, skip queries with no remaining true match, CMC cut at `max_rank` (clipped to 1),
non-interpolated AP, and mINP = (#true matches) / (rank of the last true match).

One deliberate difference: ties in distance are broken by gallery index (stable sort), where the
originals use `np.argsort`'s unstable default, so their tie order is arbitrary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facekd.utils import check_embeddings

METRICS = ("cosine", "euclidean")


def compute_distance(query, gallery, metric: str = "cosine", normalize: bool = True) -> np.ndarray:
    """(Q, d), (G, d) features → (Q, G) float32 distance, smaller = more similar.

    metric "cosine": 1 - cos (fast-reid's default); "euclidean": *squared* Euclidean distance
    (reid-strong-baseline; the ranking equals that of the plain distance). `normalize` L2-normalises
    the features first (FEAT_NORM=yes in both repositories).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    q = torch.from_numpy(check_embeddings(query, "query features", require_unit=normalize or metric == "cosine"))
    g = torch.from_numpy(check_embeddings(gallery, "gallery features", require_unit=normalize or metric == "cosine"))
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query features are {q.shape[1]}-d but gallery features are {g.shape[1]}-d")
    if metric == "cosine":
        return (1.0 - q @ g.T).numpy()
    d = (q * q).sum(1, keepdim=True) + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
    return d.clamp_(min=0).numpy()


@dataclass(frozen=True)
class ReidResult:
    """cmc[k-1] = rank-k accuracy (float64, length max_rank); mAP, mINP in [0, 1]."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int

    def to_dict(self, ranks=(1, 5, 10)) -> dict:
        out = {f"rank{r}": float(self.cmc[r - 1]) for r in ranks if r <= self.cmc.size}
        out.update(
            mAP=self.mAP,
            mINP=self.mINP,
            metric=(self.mAP + float(self.cmc[0])) / 2,
            num_valid_queries=self.num_valid_queries,
            num_queries=self.num_queries,
        )
        return out


def _int_array(x, n: int, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (n,):
        raise ValueError(f"{name}: shape {x.shape}, expected ({n},)")
    return x.astype(np.int64)


def evaluate_reid(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, chunk: int = 1024) -> ReidResult:
    """CMC / mAP / mINP of a (Q, G) distance matrix, Market-1501 protocol (module docstring).

    Vectorised over `chunk` queries at a time. Raises ValueError if no query has a valid match.
    """
    dist = np.asarray(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected (Q, G), got shape {dist.shape}")
    nq, ng = dist.shape
    q_pids, q_camids = _int_array(q_pids, nq, "q_pids"), _int_array(q_camids, nq, "q_camids")
    g_pids, g_camids = _int_array(g_pids, ng, "g_pids"), _int_array(g_camids, ng, "g_camids")
    max_rank = min(max_rank, ng)
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    for s in range(0, nq, chunk):
        order = np.argsort(dist[s : s + chunk], axis=1, kind="stable")
        qp, qc = q_pids[s : s + chunk, None], q_camids[s : s + chunk, None]
        keep = ~((g_pids[order] == qp) & (g_camids[order] == qc))
        match = (g_pids[order] == qp) & keep
        rank = np.cumsum(keep, axis=1)  # 1-based rank among kept items (valid where keep)
        valid = match.any(1)
        match, rank, keep = match[valid], rank[valid], keep[valid]
        if not match.size:
            continue
        nrel = match.sum(1)
        hits = np.cumsum(match, axis=1)  # ordinal of each true match among true matches
        aps.append(np.where(match, hits / np.maximum(rank, 1), 0.0).sum(1) / nrel)
        first = np.where(match, rank, np.iinfo(np.int64).max).min(1)
        last = np.where(match, rank, 0).max(1)
        inps.append(nrel / last)
        cmc_sum += (first[:, None] <= np.arange(1, max_rank + 1)[None, :]).sum(0)
    n_valid = int(sum(a.size for a in aps))
    if n_valid == 0:
        raise ValueError("evaluate_reid: no query has a true match in the gallery (after same-camera removal)")
    return ReidResult(
        cmc_sum / n_valid, float(np.concatenate(aps).mean()), float(np.concatenate(inps).mean()), n_valid, nq
    )


def evaluate_reid_features(
    query,
    gallery,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "cosine",
    normalize: bool = True,
    max_rank: int = 50,
) -> ReidResult:
    """`compute_distance` then `evaluate_reid`."""
    return evaluate_reid(
        compute_distance(query, gallery, metric, normalize), q_pids, g_pids, q_camids, g_camids, max_rank
    )


def recall_at_k(features, labels, ks=(1, 2, 4, 8), chunk: int = 1024) -> dict[int, float]:
    """Leave-one-out Recall@K (CUB-200 style): fraction of items whose K nearest others (cosine,
    self excluded, ties broken by index) contain one of the same label. features (N, d), labels (N,)."""
    x = torch.from_numpy(check_embeddings(features, require_unit=True))
    y = torch.from_numpy(_int_array(labels, x.shape[0], "labels"))
    kmax = max(ks)
    if kmax >= x.shape[0]:
        raise ValueError(f"recall_at_k: K={kmax} needs more than {x.shape[0]} items")
    first_hit = []
    for s in range(0, x.shape[0], chunk):
        sim = x[s : s + chunk] @ x.T
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -torch.inf
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :kmax]
        hit = y[order] == y[s : s + chunk, None]
        first_hit.append(torch.where(hit.any(1), hit.float().argmax(1), kmax))
    first = torch.cat(first_hit)
    return {k: float((first < k).float().mean()) for k in ks}
