"""IJB-B / IJB-C 1:1 template verification, as arcface_torch's eval_ijbc.py computes it.

The meta files are read by `facekd.data.ijb.read_ijb_meta`; images are aligned and embedded by the
data / embed parts. Pipeline (eval_ijbc.py's), from per-image raw features in the order of
``meta/<t>_face_tid_mid.txt``:

1. image feature: ``flip="sum"`` → f(img) + f(mirror) (F1, eval_ijbc's default), ``"concat"`` →
   [f(img), f(mirror)], ``"none"`` → f(img) (F0);
2. ``norm_score=True`` (N1, default) keeps the norm as a quality weight; False (N0) L2-normalises
   each image feature;
3. ``detector_score=True`` (D1, default) multiplies by the faceness score;
4. template = Σ over its media of (mean over the media's images), then L2-normalised;
5. score = cosine of the two templates;
6. TAR@FAR at 1e-6 … 1e-1, in the insightface (nearest ROC vertex) and strict conventions, the
   AUC and the ROC plot, all from one sort of the scores (`verification.RankedScores`).

Steps 1–4 are linear in the raw features: every image gets one scalar weight (1 / its media's
image count, × faceness, × 1 / its feature norm for N0) and the templates are one sparse
(T, N) × (N, d) product per feature array, in float32, with no (N, d) temporary. Step 5 lays the
pairs on the template Gram matrix (rows = the templates of the first column, columns = those of
the second: IJB's enrolment × verification templates, 3.5k × 19.6k for IJB-C; or all × all with
each pair as (min, max) when that is smaller) and, per tile of rows, computes the block the pairs
need with one float32 matmul when they fill at least 1/`DENSE_TILE_RATIO` of it, or else gathers
the pairs' rows in chunks into preallocated buffers and takes row-wise dots. Scores agree with a
float64 computation to ~1e-7; at IJB-C size TAR at every FAR is the float64 code's, thresholds
agree to 5e-8 (benchmarks/io.py).

TFace's IJB_Evaluation.py corresponds to ``norm_score=False, detector_score=False, flip="none"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

from facekd.evaluate.verification import RankedScores, Roc, TarAtFar, plot_roc
from facekd.utils import check_embeddings, save_json, save_npy

IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FLIP_MODES = ("sum", "concat", "none")
# A tile's Gram block is computed densely when (tile entries) ≤ DENSE_TILE_RATIO × (pairs in it).
# Measured on a 2-core x86 machine: one gathered pair dot (512-d) costs ~60× one matmul entry.
DENSE_TILE_RATIO = 32
GRAM_TILE_ENTRIES = 1 << 27  # float32 entries of one Gram tile (512 MiB)
_NORM_CHUNK = 16_384  # image rows per chunk when N0 needs the norms of f(img) + f(mirror)
_GATHER_CHUNK = 8_192  # pairs per chunk of the sparse-tile gather-and-dot


def _image_weights(x, xf, faceness, counts, flip: str, norm_score: bool, detector_score: bool) -> np.ndarray:
    """(N,) float64 weight of each image in its template sum: 1/(images of its media) × faceness
    (D1) × 1/‖image feature‖ (N0; the feature being f, f + f_mirror or [f, f_mirror])."""
    w = 1.0 / counts
    if detector_score:
        if faceness is None:
            raise ValueError("detector_score=True needs the faceness scores (last column of <t>_name_5pts_score.txt)")
        s = np.asarray(faceness, dtype=np.float64)
        if s.shape != (x.shape[0],):
            raise ValueError(f"faceness has shape {s.shape}, expected ({x.shape[0]},) (one score per image)")
        if not np.isfinite(s).all():
            bad = np.flatnonzero(~np.isfinite(s))
            raise ValueError(f"faceness: {bad.size} scores are NaN or inf (first rows {bad[:5].tolist()})")
        w = w * s
    if not norm_score:
        w = w / _image_norms(x, xf, flip)
    return w


def _image_norms(x: np.ndarray, xf: np.ndarray | None, flip: str) -> np.ndarray:
    """(N,) float64 L2 norm of each image feature, in chunks (no (N, d) temporary)."""
    sq = lambda a: np.einsum("ij,ij->i", a, a, dtype=np.float64)  # noqa: E731
    if flip == "none" or xf is None:
        return np.sqrt(sq(x))
    if flip == "concat":
        return np.sqrt(sq(x) + sq(xf))
    out = np.empty(x.shape[0])
    buf = np.empty((min(_NORM_CHUNK, x.shape[0]), x.shape[1]), dtype=np.float32)
    for s in range(0, x.shape[0], _NORM_CHUNK):
        b = buf[: min(_NORM_CHUNK, x.shape[0] - s)]
        np.add(x[s : s + b.shape[0]], xf[s : s + b.shape[0]], out=b)
        out[s : s + b.shape[0]] = np.sqrt(sq(b))
    return out


def _raw_features(x, name: str, like: np.ndarray | None = None) -> np.ndarray:
    """A float32 (N, d) view (a copy only for other dtypes); values are checked later, on the templates."""
    x = np.asarray(x)
    x = x if x.dtype == np.float32 else x.astype(np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D (N, d) array, got shape {x.shape}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {like.shape} like features")
    return x


def _pooling_keys(templates, medias, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique template ids (T,), template index of each image (N,), images in its media (N,))."""
    t, m = np.asarray(templates).astype(np.int64), np.asarray(medias).astype(np.int64)
    if t.shape != (n,) or m.shape != (n,):
        raise ValueError(f"templates {t.shape} and medias {m.shape} must both be ({n},), one per image")
    ids, t_idx = np.unique(t, return_inverse=True)
    m_idx = np.unique(m, return_inverse=True)[1]
    _, tm_idx, counts = np.unique(t_idx * np.int64(n) + m_idx, return_inverse=True, return_counts=True)
    return ids, t_idx.ravel(), counts[tm_idx.ravel()]


def template_features(
    features,
    templates,
    medias,
    *,
    features_flip=None,
    faceness=None,
    flip: str = "sum",
    norm_score: bool = True,
    detector_score: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised template features from raw per-image features, steps 1–4 of the module docstring.

    features / features_flip: raw (N, d) embeddings of each image and its mirror (features_flip is
    required unless flip="none"); templates, medias: (N,) ids per image; faceness: (N,) detector
    scores (required with detector_score). Returns (unique template ids (T,) int64, float32 (T, d),
    or (T, 2d) for flip="concat").
    """
    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
    x = _raw_features(features, "features")
    xf = None
    if flip != "none":
        if features_flip is None:
            raise ValueError(f"flip={flip!r} needs the mirrored-image features (features_flip)")
        xf = _raw_features(features_flip, "features_flip", like=x)
    ids, t_idx, counts = _pooling_keys(templates, medias, x.shape[0])
    w = _image_weights(x, xf, faceness, counts, flip, norm_score, detector_score)
    pool = scipy.sparse.csr_matrix((w.astype(np.float32), (t_idx, np.arange(x.shape[0]))), shape=(ids.size, x.shape[0]))
    tmpl = np.asarray(pool @ x)
    if xf is not None:
        tmpl = tmpl + pool @ xf if flip == "sum" else np.concatenate([tmpl, np.asarray(pool @ xf)], axis=1)
    norms = np.linalg.norm(tmpl, axis=1, keepdims=True)
    if not np.isfinite(norms).all():  # NaN / inf / (under N0) zero-norm images: name them
        check_embeddings(x, "features")
        if xf is not None:
            check_embeddings(xf, "features_flip")
        raise ValueError(
            "features: some f(img) + f(mirror) have zero norm, which N0 (norm_score=False) cannot normalise"
        )
    if (norms == 0).any():
        bad = ids[norms[:, 0] == 0]
        raise ValueError(f"templates with a zero feature sum (first ids {bad[:5].tolist()}): check faceness/features")
    tmpl /= norms
    return ids, tmpl


def _positions(ids: np.ndarray, p, name: str) -> np.ndarray:
    """Row of each template id of `p` in the sorted unique `ids` → int32 (P,); unknown ids raise."""
    p = np.asarray(p).astype(np.int64, copy=False)
    off, hi = min(int(ids[0]), 0), int(ids[-1])
    if p.size and hi - off < 1 << 24 and off <= p.min() and p.max() <= hi:  # a lookup table, O(1) per pair
        table = np.full(hi - off + 1, -1, dtype=np.int32)
        table[ids - off] = np.arange(ids.size, dtype=np.int32)
        pos = table[p - off if off else p]
    else:
        i = np.clip(np.searchsorted(ids, p), 0, ids.size - 1)
        pos = np.where(ids[i] == p, i, -1).astype(np.int32)
    missing = pos < 0
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"template pair row {row}: {name} template id {p[row]} has no images "
            f"({int(missing.sum())} pairs reference unknown templates)"
        )
    return pos


def _gather_dot(rows: torch.Tensor, cols: torch.Tensor, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[i] = rows[a[i]] · cols[b[i]], gathering `_GATHER_CHUNK` pairs at a time into two
    preallocated buffers (no per-chunk temporaries)."""
    n, d = min(_GATHER_CHUNK, a.size), rows.shape[1]
    buf_a, buf_b = torch.empty((n, d)), torch.empty((n, d))
    at, bt, ot = torch.from_numpy(a.astype(np.int64)), torch.from_numpy(b.astype(np.int64)), torch.from_numpy(out)
    for s in range(0, a.size, _GATHER_CHUNK):
        k = min(_GATHER_CHUNK, a.size - s)
        torch.index_select(rows, 0, at[s : s + k], out=buf_a[:k])
        torch.index_select(cols, 0, bt[s : s + k], out=buf_b[:k])
        torch.sum(buf_a[:k].mul_(buf_b[:k]), dim=1, out=ot[s : s + k])


def _score_tile(rows: torch.Tensor, cols: torch.Tensor, a: np.ndarray, b: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Scores (k,) float32 of the pairs (rows[a[i]], cols[b[i]]) of one tile of `rows` (≤ tile rows)."""
    out = np.empty(a.size, dtype=np.float32)
    mark = np.zeros(cols.shape[0], dtype=bool)
    mark[b] = True
    used = np.flatnonzero(mark)
    n_rows = int(a.max()) + 1
    if n_rows * used.size > DENSE_TILE_RATIO * a.size:
        _gather_dot(rows, cols, a, b, out)
        return out
    rank[used] = np.arange(used.size)
    gram = (rows[:n_rows] @ cols[torch.from_numpy(used)].T).numpy()
    flat = rank[b]
    flat += a * np.int64(used.size)  # int64: a tile may hold over 2^31 entries
    np.take(gram.ravel(), flat, out=out)
    return out


def _compact(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values of pos (U,) ascending, pos rewritten as indices into them (P,) int32)."""
    used = np.zeros(n, dtype=bool)
    used[pos] = True
    index = np.cumsum(used, dtype=np.int32) - 1
    return np.flatnonzero(used), index[pos]


def _pair_layout(pos1: np.ndarray, pos2: np.ndarray, n: int):
    """The smaller of two ways to lay the pairs on a Gram matrix, as (row templates (R,), a (P,),
    column templates (C,), b (P,)) with pair i = (row a[i], column b[i]):

    * as given: rows = the templates in p1, columns = those in p2 (R·C entries; IJB's enrolment ×
      verification pairs make this 3.5k × 19.6k for IJB-C);
    * symmetric: rows = columns = all templates, each pair as (min, max) (≈ T²/2 entries).
    """
    rows, a = _compact(pos1, n)
    cols, b = _compact(pos2, n)
    if rows.size * cols.size <= n * n // 2:
        return rows, a, cols, b
    everything = np.arange(n)
    return everything, np.minimum(pos1, pos2), everything, np.maximum(pos1, pos2)


def pair_scores(template_ids, template_feats, p1, p2, tile: int | None = None) -> np.ndarray:
    """Cosine score (P,) float32 of each template pair (p1[i], p2[i]); features are unit rows (T, D).

    The pairs are laid on the template Gram matrix (`_pair_layout`); its rows are cut into tiles of
    `tile` rows (default: as many as keep a tile within `GRAM_TILE_ENTRIES`), the pairs grouped by
    tile (one radix sort, skipped when there is one tile) and each tile scored by one dense Gram
    block or by chunked gather-and-dot (module docstring). torch's intra-op threads run the matmuls.
    """
    ids = np.asarray(template_ids).astype(np.int64)
    feats = torch.from_numpy(np.ascontiguousarray(template_feats, dtype=np.float32))
    if ids.shape != (feats.shape[0],):
        raise ValueError(f"template ids {ids.shape} must be ({feats.shape[0]},), one per template feature row")
    pos1, pos2 = _positions(ids, p1, "p1"), _positions(ids, p2, "p2")
    if pos1.shape != pos2.shape:
        raise ValueError(f"p1 {pos1.shape} and p2 {pos2.shape} must have the same length")
    row_t, a, col_t, b = _pair_layout(pos1, pos2, ids.size)
    del pos1, pos2
    rows, cols = feats[torch.from_numpy(row_t)], feats[torch.from_numpy(col_t)]
    tile = max(64, tile or GRAM_TILE_ENTRIES // cols.shape[0])
    rank = np.empty(cols.shape[0], dtype=np.int64)
    with torch.no_grad():
        if rows.shape[0] <= tile:
            return _score_tile(rows, cols, a, b, rank)
        block = (a // tile).astype(np.uint16 if rows.shape[0] // tile < 1 << 16 else np.int64)
        order = np.argsort(block, kind="stable")  # a radix sort for 16-bit keys
        bounds = np.r_[0, np.cumsum(np.bincount(block, minlength=rows.shape[0] // tile + 1))]
        a, b = a[order], b[order]
        sorted_scores = np.empty(a.size, dtype=np.float32)
        for k in range(bounds.size - 1):
            s, e, r0 = bounds[k], bounds[k + 1], k * tile
            if e > s:
                sorted_scores[s:e] = _score_tile(rows[r0 : r0 + tile], cols, a[s:e] - r0, b[s:e], rank)
    out = np.empty_like(sorted_scores)
    out[order] = sorted_scores
    return out


@dataclass
class IJBResult:
    """Scores of every template pair, TAR@FAR in both conventions, the ROC (vertices + AUC)."""

    scores: np.ndarray  # (P,) float32
    labels: np.ndarray  # (P,) bool
    insightface: list[TarAtFar]
    strict: list[TarAtFar]
    roc: Roc
    settings: dict

    @property
    def auc(self) -> float:
        return self.roc.auc

    def to_dict(self) -> dict:
        return {
            "n_pairs": int(self.labels.size),
            "n_genuine": int(self.labels.sum()),
            "n_impostor": int((~self.labels).sum()),
            "auc": self.auc,
            "settings": self.settings,
            "tar_at_far_insightface": [t.to_dict() for t in self.insightface],
            "tar_at_far_strict": [t.to_dict() for t in self.strict],
        }

    def table(self) -> str:
        """Markdown table of TAR (%) per FAR in both conventions, like eval_ijbc's PrettyTable."""
        head = "| convention | " + " | ".join(f"{t.far:.0e}" for t in self.insightface) + " |"
        rows = [
            f"| {name} | " + " | ".join(f"{100 * t.tar:.2f}" for t in ts) + " |"
            for name, ts in (("insightface", self.insightface), ("strict", self.strict))
        ]
        return "\n".join([head, "|" + "---|" * (len(self.insightface) + 1), *rows])


def evaluate_ijb(
    features,
    templates,
    medias,
    p1,
    p2,
    labels,
    *,
    features_flip=None,
    faceness=None,
    flip: str = "sum",
    norm_score: bool = True,
    detector_score: bool = True,
    fars: Sequence[float] = IJB_FARS,
) -> IJBResult:
    """Full IJB 1:1 evaluation from per-image raw features (N, d). See the module docstring."""
    y = np.asarray(labels)
    if y.shape != np.shape(p1) or not np.isin(y, (0, 1)).all():
        raise ValueError(f"pair labels: expected ({len(p1)},) values in {{0, 1}}, got shape {y.shape}")
    ids, tf = template_features(
        features,
        templates,
        medias,
        features_flip=features_flip,
        faceness=faceness,
        flip=flip,
        norm_score=norm_score,
        detector_score=detector_score,
    )
    scores = pair_scores(ids, tf, p1, p2)
    ranked = RankedScores(scores, y, "IJB template pairs")
    settings = {
        "flip": flip,
        "norm_score": norm_score,
        "detector_score": detector_score,
        "code": f"N{int(norm_score)}D{int(detector_score)}F{int(flip != 'none')}",
    }
    return IJBResult(
        scores,
        y.astype(bool),
        ranked.tar_at_far(fars, "insightface"),
        ranked.tar_at_far(fars, "strict"),
        ranked.roc,
        settings,
    )


def write_ijb_outputs(result: IJBResult, out_dir: str | os.PathLike, name: str) -> None:
    """Write `<name>.npy` (pair scores, as eval_ijbc saves them), `<name>.json` and `<name>_roc.png`."""
    out = Path(out_dir)
    save_npy(out / f"{name}.npy", result.scores.astype(np.float32, copy=False))
    save_json(out / f"{name}.json", result.to_dict())
    plot_roc({f"{name} {result.settings['code']}": result.roc}, out / f"{name}_roc.png", title=f"ROC on {name}")
