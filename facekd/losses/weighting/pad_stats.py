"""What PAD's learned variance says about the data: statistics of per-sample σ² (plain numpy).

Inputs are per-sample arrays over a dataset (`facekd.losses.pad_variance.per_sample_variance` makes
them from a trained run): the learned log-variance, the distillation gap, and what is known about
the samples (demographic group, nuisance strengths, the teacher's embeddings and labels).

"Prime-Aware Adaptive Distillation" (arXiv 2008.01458) reads σ² as the difficulty of a sample: it
should grow with the gap (Fig. 2), and with what makes a sample hard to learn (Fig. 3). The numbers
here test exactly that: `log_sigma2_std` (does σ² vary at all?), `spearman_sigma2_gap` (Fig. 2),
mean σ² by group and by nuisance-strength quantile, and σ² against the teacher's own errors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import spearmanr

__all__ = ["pad_statistics", "teacher_margin"]

# above this many (rows × classes), the nearest-centre teacher errors are skipped (cost O(N·C·d))
MAX_MARGIN_CELLS = 2_000_000_000


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; nan when either side is constant."""
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def teacher_margin(embeddings: np.ndarray, labels: np.ndarray, chunk: int = 4096) -> np.ndarray | None:
    """Per-sample teacher margin (N,): cos(t_i, c_{y_i}) − max_{c ≠ y_i} cos(t_i, c), with c the
    normalised mean teacher embedding of each class over these rows. Negative = a teacher error (the
    nearest class centre is another class). None when there is one class or the cost is too large."""
    classes, y = np.unique(labels, return_inverse=True)
    if classes.size < 2 or labels.size * classes.size > MAX_MARGIN_CELLS:
        return None
    t = embeddings.astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True).clip(min=1e-12)
    centres = np.zeros((classes.size, t.shape[1]), np.float64)
    np.add.at(centres, y, t)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True).clip(min=1e-12)
    centres32 = centres.astype(np.float32)
    out = np.empty(labels.size, np.float32)
    for i in range(0, labels.size, chunk):
        cos = t[i : i + chunk] @ centres32.T
        rows = np.arange(cos.shape[0])
        own = cos[rows, y[i : i + chunk]].copy()
        cos[rows, y[i : i + chunk]] = -np.inf
        out[i : i + chunk] = own - cos.max(axis=1)
    return out


def _by_quantile(sigma2: np.ndarray, values: np.ndarray, bins: int) -> dict:
    """Mean σ² per quantile bin of `values` (nuisance strength), and their Spearman correlation."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max(edges.size - 2, 0))
    return {
        "edges": edges.tolist(),
        "mean_sigma2": [float(sigma2[which == b].mean()) for b in range(max(edges.size - 1, 1)) if (which == b).any()],
        "spearman": _spearman(sigma2, values),
    }


def pad_statistics(
    log_sigma2: np.ndarray,
    gap: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    nuisance: Mapping[str, np.ndarray] | None = None,
    margin: np.ndarray | None = None,
    flags: Mapping[str, np.ndarray] | None = None,
    bins: int = 4,
) -> dict:
    """Summary of a PAD run's learned variance over a dataset (plain JSON data).

    log_sigma2: (N,) per-sample mean ln σ²; gap: (N,) distillation gap ‖s − t‖².
    groups: (N,) demographic group ids → mean σ² per group. nuisance: name → (N,) strength (|yaw|
    for signed angles is the caller's choice) → mean σ² per quantile bin. margin: `teacher_margin`
    → Spearman(σ², −margin) and mean σ² of teacher errors (margin < 0) vs the rest. flags: name →
    (N,) bool (hard images, noisy labels) → mean σ² of flagged vs other samples.

    Keys: n, log_sigma2_std, spearman_sigma2_gap, mean_sigma2, mean_gap, and when given
    by_group, by_nuisance, teacher, by_flag.
    """
    lv = np.asarray(log_sigma2, np.float64)
    g = np.asarray(gap, np.float64)
    if lv.shape != g.shape or lv.ndim != 1:
        raise ValueError(f"log_sigma2 and gap must be (N,) arrays of one length, got {lv.shape} and {g.shape}")
    sigma2 = np.exp(np.clip(lv, -700.0, 700.0))  # a diverged branch reports a huge, finite σ²
    out: dict = {
        "n": int(lv.size),
        "log_sigma2_std": float(lv.std()),
        "spearman_sigma2_gap": _spearman(lv, g),
        "mean_sigma2": float(sigma2.mean()),
        "mean_gap": float(g.mean()),
    }
    if groups is not None:
        gr = np.asarray(groups)
        out["by_group"] = {str(k): float(sigma2[gr == k].mean()) for k in np.unique(gr)}
    if nuisance:
        out["by_nuisance"] = {
            name: _by_quantile(sigma2, np.asarray(v, np.float64), bins) for name, v in nuisance.items()
        }
    if margin is not None:
        m = np.asarray(margin, np.float64)
        err = m < 0
        out["teacher"] = {
            "error_rate": float(err.mean()),
            "spearman_sigma2_teacher_doubt": _spearman(lv, -m),
            "mean_sigma2_errors": float(sigma2[err].mean()) if err.any() else float("nan"),
            "mean_sigma2_correct": float(sigma2[~err].mean()) if (~err).any() else float("nan"),
        }
    if flags:
        out["by_flag"] = {
            name: {
                "share": float(np.mean(f)),
                "mean_sigma2_flagged": float(sigma2[f].mean()) if f.any() else float("nan"),
                "mean_sigma2_other": float(sigma2[~f].mean()) if (~f).any() else float("nan"),
            }
            for name, f in ((k, np.asarray(v, bool)) for k, v in flags.items())
        }
    return out
