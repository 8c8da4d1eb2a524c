"""1:1 verification metrics: TAR@FAR (two conventions), ROC, insightface's 10-fold `.bin` accuracy.

Scores are similarities (higher = more alike), `issame` is a boolean array (True = genuine pair).

Two TAR@FAR conventions (face-ecosystem.md §5):

* ``"insightface"`` — what eval_ijbc.py, FaceX-Zoo and TFace print: ``sklearn.metrics.roc_curve``
  with its defaults (``drop_intermediate=True``), both arrays flipped, then the ROC vertex with the
  smallest ``|fpr - target|`` (ties go to the largest TPR). Nearest point, no interpolation; the
  realised FAR may be *above* the target.
* ``"strict"`` — FAR ≤ target, tie-safe: ``k = floor(target·|I|)``, ``τ`` = the (k+1)-th largest
  impostor score, accept scores strictly greater than ``τ``. At most ``k`` impostors are accepted,
  even with ties. ``k = 0`` gives ``τ = max(impostors)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import auc
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from facekd.utils import atomic_path, check_embeddings

CONVENTIONS = ("strict", "insightface")
DEFAULT_FARS = (1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class TarAtFar:
    """One operating point. `achieved_far` is the FAR actually realised at `threshold`."""

    far: float
    tar: float
    threshold: float
    achieved_far: float
    n_genuine: int
    n_impostor: int
    expected_false_accepts: float  # far · n_impostor: below ~10-100 the TAR is unstable
    convention: str

    def to_dict(self) -> dict:
        return asdict(self)


def split_scores(scores, issame, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validate (n,) scores and (n,) booleans; return (genuine, impostor) score arrays.

    Float32 scores stay float32 (the order, and so every metric, is that of the float32 values);
    any other type becomes float64.
    """
    s = np.asarray(scores)
    s = (s if s.dtype in (np.float32, np.float64) else s.astype(np.float64)).ravel()
    y = np.asarray(issame)
    if y.shape != (s.size,):
        raise ValueError(f"{name}: issame has shape {y.shape}, expected ({s.size},) like the scores")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{name}: issame must be boolean or 0/1, got values {np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        bad = np.flatnonzero(~np.isfinite(s))
        raise ValueError(f"{name}: {bad.size} scores are NaN or inf (first rows {bad[:5].tolist()})")
    gen, imp = s[y], s[~y]
    if gen.size == 0 or imp.size == 0:
        raise ValueError(f"{name}: need both genuine and impostor pairs, got {gen.size} genuine, {imp.size} impostor")
    return gen, imp


@dataclass(frozen=True)
class Roc:
    """ROC vertices (as sklearn.metrics.roc_curve with drop_intermediate=True) and the AUC.

    fpr, tpr: (m,) float64, non-decreasing, starting at (0, 0); thresholds: (m,) float64,
    decreasing, thresholds[0] = inf; a vertex counts the scores ≥ its threshold.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def _check_fars(fars: Sequence[float]) -> None:
    for far in fars:
        if not 0.0 < far <= 1.0:
            raise ValueError(f"target FAR must be in (0, 1], got {far}")


class RankedScores:
    """Genuine and impostor scores, each sorted once; every metric is read from this one sort.

    `tar_at_far` (both conventions), `roc` (vertices + AUC, identical to sklearn's `roc_curve` /
    `roc_auc_score`) and `plot_roc` all use the same sorted arrays, so a 15.7M-pair IJB-C result is
    sorted once instead of once per metric.
    """

    def __init__(self, scores, issame, name: str = "scores"):
        gen, imp = split_scores(scores, issame, name)
        gen.sort()
        imp.sort()
        self.genuine, self.impostor = gen, imp  # ascending, (G,) and (I,)
        self._roc: Roc | None = None

    @property
    def n_genuine(self) -> int:
        return int(self.genuine.size)

    @property
    def n_impostor(self) -> int:
        return int(self.impostor.size)

    def _count_above(self, tau: float) -> tuple[int, int]:
        """(#genuine > τ, #impostor > τ)."""
        return (
            self.n_genuine - int(np.searchsorted(self.genuine, tau, "right")),
            self.n_impostor - int(np.searchsorted(self.impostor, tau, "right")),
        )

    def strict_threshold(self, far: float) -> tuple[float, int]:
        """τ for FAR ≤ `far`: the (k+1)-th largest impostor score, k = floor(far·|I|). Returns (τ, k).

        When k ≥ |I| (far = 1), τ = -inf (everything accepted).
        """
        n = self.n_impostor
        # round() guards against 1e-3 * 3000 = 2.9999999999999996 style products
        k = math.floor(round(far * n, 9))
        return (-math.inf if k >= n else float(self.impostor[n - 1 - k])), k

    def tar_at_far(self, fars: Sequence[float] = DEFAULT_FARS, convention: str = "strict") -> list[TarAtFar]:
        """TAR at each target FAR in `convention` ("strict" or "insightface", module docstring)."""
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        _check_fars(fars)
        ng, ni = self.n_genuine, self.n_impostor
        out = []
        for far in fars:
            if convention == "strict":
                tau = self.strict_threshold(far)[0]
                above_g, above_i = self._count_above(tau)
                tar, thr, achieved = above_g / ng, tau, above_i / ni
            else:
                r, i = self.roc, self._nearest_vertex(far)
                tar, thr, achieved = float(r.tpr[i]), float(r.thresholds[i]), float(r.fpr[i])
            out.append(TarAtFar(float(far), float(tar), thr, float(achieved), ng, ni, float(far) * ni, convention))
        return out

    def _nearest_vertex(self, far: float) -> int:
        """eval_ijbc's argmin |fpr − far| over the flipped ROC, by binary search: of equally near
        vertices the one latest in ROC order (larger FPR, then larger TPR) wins, as the flip makes it."""
        fpr = self.roc.fpr
        below = int(np.searchsorted(fpr, far, "right")) - 1  # last vertex with fpr ≤ far (≥ 0: fpr[0] = 0)
        if below + 1 == fpr.size:
            return below
        above = int(np.searchsorted(fpr, fpr[below + 1], "right")) - 1  # last vertex of the next FPR
        return above if abs(fpr[above] - far) <= abs(fpr[below] - far) else below

    @property
    def roc(self) -> Roc:
        """The ROC, computed on first use from the two sorted arrays (no further sort)."""
        if self._roc is None:
            self._roc = _roc_from_sorted(self.genuine, self.impostor)
        return self._roc


def _roc_from_sorted(gen: np.ndarray, imp: np.ndarray) -> Roc:
    """sklearn's roc_curve (drop_intermediate=True) and roc_auc_score from ascending genuine and
    impostor scores: the two runs are merged by position (O(n), no sort), then sklearn's steps on
    integer counts (exact, and converted to float64 as sklearn's are)."""
    ng, n = gen.size, gen.size + imp.size
    pos = np.searchsorted(imp, gen, "left") + np.arange(ng)  # genuine slots in the ascending merge
    is_gen = np.zeros(n, dtype=bool)
    is_gen[pos] = True
    merged = np.empty(n, dtype=np.result_type(gen, imp))
    merged[pos] = gen
    merged[~is_gen] = imp
    desc, gen_desc = merged[::-1], is_gen[::-1]
    # one vertex per distinct score: cumulative counts at the last index of each run of equal scores
    last = np.flatnonzero(np.r_[desc[1:] != desc[:-1], True])
    tps = np.cumsum(gen_desc, dtype=np.int64)[last]
    fps = last + 1 - tps
    if fps.size > 2:  # drop the vertices collinear with their neighbours, as sklearn does
        corner = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        last, tps, fps = last[corner], tps[corner], fps[corner]
    fpr = np.r_[0.0, fps] / float(fps[-1])
    tpr = np.r_[0.0, tps] / float(tps[-1])
    return Roc(fpr, tpr, np.r_[np.inf, desc[last].astype(np.float64)], float(auc(fpr, tpr)))


def tar_at_far(scores, issame, fars: Sequence[float] = DEFAULT_FARS, convention: str = "strict") -> list[TarAtFar]:
    """TAR at each target FAR for similarity `scores` (n,) and boolean `issame` (n,).

    convention: "strict" (FAR ≤ target, accept s > τ) or "insightface" (nearest ROC vertex,
    accept s ≥ τ). See the module docstring. To get several metrics of one score set, build one
    `RankedScores` and ask it (one sort instead of one per call).
    """
    return RankedScores(scores, issame).tar_at_far(fars, convention)


def roc(scores, issame) -> Roc:
    """ROC of similarity `scores` (n,) against boolean `issame` (n,)."""
    return RankedScores(scores, issame).roc


def _polyline(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC's vertices minus those inside a horizontal or vertical run: the same drawn line
    with at most ~4 points per genuine score (float32 ties can leave millions of vertices)."""
    if fpr.size < 3:
        return fpr, tpr
    inner_h = (tpr[1:-1] == tpr[:-2]) & (tpr[1:-1] == tpr[2:])
    inner_v = (fpr[1:-1] == fpr[:-2]) & (fpr[1:-1] == fpr[2:])
    keep = np.r_[True, ~(inner_h | inner_v), True]
    return fpr[keep], tpr[keep]


def plot_roc(
    curves: Mapping[str, Roc | RankedScores | tuple],
    path: str | os.PathLike,
    title: str = "ROC",
    fars: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
) -> None:
    """Write a PNG (or any matplotlib suffix) of TAR vs log-FAR for each named curve, given as a
    `Roc`, a `RankedScores` or a (scores, issame) pair (sorted here).

    The x-axis starts at the smallest positive FAR any curve reaches (or min(fars)).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    low = min(fars)
    for name, curve in curves.items():
        r = curve if isinstance(curve, Roc) else curve.roc if isinstance(curve, RankedScores) else roc(*curve)
        fpr, tpr = _polyline(r.fpr, r.tpr)
        keep = fpr > 0
        if keep.any():
            low = min(low, float(fpr[keep].min()))
        ax.plot(fpr[keep], tpr[keep], label=f"{name} (AUC {r.auc:.4f})")
    ax.set_xscale("log")
    ax.set_xlim(low, 1.0)
    ax.set_ylim(0.0, 1.0)
    for far in fars:
        ax.axvline(far, color="0.85", lw=0.6, zorder=0)
    ax.set_xlabel("False Accept Rate")
    ax.set_ylabel("True Accept Rate")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# insightface `.bin` protocol (AT/eval/verification.py::evaluate / calculate_roc)

INSIGHTFACE_THRESHOLDS = np.arange(0, 4, 0.01)


@dataclass(frozen=True)
class VerificationAccuracy:
    """Mean/std (ddof=0) of the per-fold accuracies; per-fold best thresholds (squared L2)."""

    mean: float
    std: float
    thresholds: np.ndarray  # (nfolds,)
    fold_accuracies: np.ndarray  # (nfolds,)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "thresholds": self.thresholds.tolist(),
            "fold_accuracies": self.fold_accuracies.tolist(),
        }


def _accuracy_per_threshold(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of "same iff dist < t" for each t: (#genuine < t + #impostor ≥ t) / n, by sorting."""
    tp = np.searchsorted(np.sort(dist[same]), thresholds, side="left")
    imp = np.sort(dist[~same])
    tn = imp.size - np.searchsorted(imp, thresholds, side="left")
    return (tp + tn) / dist.size


def verification_accuracy(emb_a, emb_b, issame, nfolds: int = 10) -> VerificationAccuracy:
    """insightface's k-fold accuracy for pairs (emb_a[i], emb_b[i]), emb_* (n, d), issame (n,).

    Rows are L2-normalised (float32, as insightface), distance = squared L2 in [0, 4], a pair is
    "same" when dist < threshold, thresholds = arange(0, 4, 0.01). Contiguous folds
    (KFold(nfolds, shuffle=False)); per fold the threshold with the best accuracy on the other
    folds (argmax: ties → smallest threshold) is applied to the held-out fold.
    """
    a = normalize(check_embeddings(emb_a, "emb_a"))
    b = normalize(check_embeddings(emb_b, "emb_b"))
    y = np.asarray(issame, dtype=bool).ravel()
    if a.shape != b.shape or y.size != a.shape[0]:
        raise ValueError(f"verification_accuracy: emb_a {a.shape}, emb_b {b.shape}, issame ({y.size},) must agree")
    if y.size < nfolds:
        raise ValueError(f"verification_accuracy: {y.size} pairs cannot make {nfolds} folds")
    dist = np.sum(np.square(a - b), 1)
    splits = (
        KFold(n_splits=nfolds, shuffle=False).split(np.arange(y.size)) if nfolds > 1 else [(np.arange(y.size),) * 2]
    )
    fold_accs, best = [], []
    for train, test in splits:
        t = int(np.argmax(_accuracy_per_threshold(dist[train], y[train], INSIGHTFACE_THRESHOLDS)))
        best.append(INSIGHTFACE_THRESHOLDS[t])
        fold_accs.append(_accuracy_per_threshold(dist[test], y[test], INSIGHTFACE_THRESHOLDS[t : t + 1])[0])
    accs = np.asarray(fold_accs)
    return VerificationAccuracy(float(accs.mean()), float(accs.std()), np.asarray(best), accs)


@dataclass(frozen=True)
class AccuracyFlip:
    """insightface's Accuracy-Flip (mean, std over folds) and XNorm (mean raw embedding norm)."""

    mean: float
    std: float
    xnorm: float
    accuracy: VerificationAccuracy


def accuracy_flip(emb_raw_orig, emb_raw_flip, issame, nfolds: int = 10) -> AccuracyFlip:
    """Accuracy-Flip of a `.bin` set: raw embeddings (2n, d) of each image and of its mirror.

    Rows 2i and 2i+1 are pair i (the `.bin` layout). The pair embedding is
    normalize(orig + flip); XNorm is the mean raw L2 norm over both copies (4n rows).
    """
    o = check_embeddings(emb_raw_orig, "emb_raw_orig")
    f = check_embeddings(emb_raw_flip, "emb_raw_flip")
    if o.shape != f.shape or o.shape[0] % 2:
        raise ValueError(f"accuracy_flip: orig {o.shape} and flip {f.shape} must be equal (2n, d) arrays")
    xnorm = float(np.concatenate([np.linalg.norm(o, axis=1), np.linalg.norm(f, axis=1)]).astype(np.float64).mean())
    emb = normalize(o + f)
    acc = verification_accuracy(emb[0::2], emb[1::2], issame, nfolds)
    return AccuracyFlip(acc.mean, acc.std, xnorm, acc)


def format_insightface_line(
    name: str, step: int, acc: float, std: float, *, xnorm: float | None = None, highest: float | None = None
) -> str:
    """The log lines CallBackVerification prints, newline-joined in its order:

    ``[lfw][2000]XNorm: 21.123456`` (if xnorm), ``[lfw][2000]Accuracy-Flip: 0.99817+-0.00229``,
    ``[lfw][2000]Accuracy-Highest: 0.99817`` (if highest).
    """
    lines = []
    if xnorm is not None:
        lines.append(f"[{name}][{step:d}]XNorm: {xnorm:f}")
    lines.append(f"[{name}][{step:d}]Accuracy-Flip: {acc:1.5f}+-{std:1.5f}")
    if highest is not None:
        lines.append(f"[{name}][{step:d}]Accuracy-Highest: {highest:1.5f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# one-call evaluation of a pair list over an embedding matrix


def _tars(scores, issame, fars, convention) -> list[dict]:
    return [t.to_dict() for t in tar_at_far(scores, issame, fars, convention)]


def evaluate_pairs(embeddings, pairs, groups=None, fars: Sequence[float] = DEFAULT_FARS, nfolds: int = 10) -> dict:
    """Everything the demo reports about a pair list, as a JSON-serialisable dict.

    embeddings: (N, d) (normalised here); pairs: object with int `.a`, `.b` (n,) row indices,
    bool `.issame` (n,) and optional bool `.hard` (n,); groups: optional int (N,) group per image.

    Keys: n_pairs, n_genuine, n_impostor, auc, tar_at_far (strict), tar_at_far_insightface,
    accuracy (10-fold, insightface protocol, on the pair embeddings), and when available:
    * hard: ``tar_at_global_threshold`` = TAR of the *hard genuine* pairs at the strict
      thresholds fixed by all impostors; ``tar_at_far_within`` = strict TAR@FAR on the hard
      subset alone (only if it holds both genuine and impostor pairs);
    * groups: per group g, genuine pairs are those whose *first* image is in g, impostors those
      whose *both* images are in g (cross-group impostors are too easy to set a per-group
      threshold). Reported per group: own-threshold strict TAR@FAR, and TAR / FAR at the global
      strict thresholds, with counts. Groups lacking genuine or impostor pairs get counts only.
    """
    e = check_embeddings(embeddings, require_unit=True)
    a, b = np.asarray(pairs.a, dtype=np.int64), np.asarray(pairs.b, dtype=np.int64)
    y = np.asarray(pairs.issame, dtype=bool)
    if not (a.shape == b.shape == y.shape) or a.ndim != 1:
        raise ValueError(f"pairs: a {a.shape}, b {b.shape}, issame {y.shape} must be equal 1-D arrays")
    for name, idx in (("a", a), ("b", b)):
        if idx.size and (idx.min() < 0 or idx.max() >= e.shape[0]):
            raise ValueError(f"pairs.{name}: index out of range [0, {e.shape[0]}) (got {idx.min()}..{idx.max()})")
    scores = np.einsum("ij,ij->i", e[a], e[b]).astype(np.float64)
    ranked = RankedScores(scores, y)
    strict = ranked.tar_at_far(fars, "strict")
    out = {
        "n_pairs": int(y.size),
        "n_genuine": int(y.sum()),
        "n_impostor": int((~y).sum()),
        "auc": ranked.roc.auc,
        "tar_at_far": [t.to_dict() for t in strict],
        "tar_at_far_insightface": [t.to_dict() for t in ranked.tar_at_far(fars, "insightface")],
        "accuracy": verification_accuracy(e[a], e[b], y, nfolds).to_dict(),
    }
    hard = getattr(pairs, "hard", None)
    if hard is not None:
        h = np.asarray(hard, dtype=bool)
        hg = scores[h & y]
        res: dict[str, Any] = {"n_genuine": int(hg.size), "n_impostor": int((h & ~y).sum())}
        if hg.size:
            res["tar_at_global_threshold"] = [
                {"far": t.far, "threshold": t.threshold, "tar": float(np.mean(hg > t.threshold))} for t in strict
            ]
        if res["n_genuine"] and res["n_impostor"]:
            res["tar_at_far_within"] = _tars(scores[h], y[h], fars, "strict")
        out["hard"] = res
    if groups is not None:
        g = np.asarray(groups, dtype=np.int64)
        if g.shape != (e.shape[0],):
            raise ValueError(f"groups: shape {g.shape}, expected ({e.shape[0]},) (one group per embedding row)")
        per: dict[str, Any] = {}
        for grp in np.unique(g):
            gen_m = y & (g[a] == grp)
            imp_m = ~y & (g[a] == grp) & (g[b] == grp)
            res = {"n_genuine": int(gen_m.sum()), "n_impostor": int(imp_m.sum())}
            if res["n_genuine"] and res["n_impostor"]:
                sel = gen_m | imp_m
                res["tar_at_far"] = _tars(scores[sel], y[sel], fars, "strict")
                res["at_global_threshold"] = [
                    {
                        "far": t.far,
                        "threshold": t.threshold,
                        "tar": float(np.mean(scores[gen_m] > t.threshold)),
                        "far_achieved": float(np.mean(scores[imp_m] > t.threshold)),
                    }
                    for t in strict
                ]
            per[str(int(grp))] = res
        out["groups"] = per
    return out
