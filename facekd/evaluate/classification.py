"""Classification metrics of a student: top-k accuracy and per-class accuracy, from logits.

Top-k counts a sample as correct when its true class is among the k largest logits. Ties are
broken by class index (a stable descending sort: of two equal logits the lower class id ranks
first), so the result does not depend on `torch.topk`'s unspecified tie order; top-1 then agrees
with `argmax`. Per-class accuracy is the top-1 accuracy of each class's samples; their mean over
the classes present ("balanced accuracy") is what a long-tailed test set should be judged on
(the data-bias paper's point: the overall accuracy hides the tail classes).

`facekd.evaluate.model_eval.evaluate_classifier` runs a backbone + linear head over a dataset and
calls `classification_accuracy` on the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ClassificationResult:
    """topk[k]: fraction of samples whose class is among the k top logits; per_class (C,): top-1
    accuracy of each class (NaN where a class has no sample); counts (C,): samples per class."""

    topk: dict[int, float]
    per_class: np.ndarray
    counts: np.ndarray

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def mean_per_class(self) -> float:
        """Mean top-1 accuracy over the classes that have samples (balanced accuracy)."""
        return float(np.nanmean(self.per_class))

    def to_dict(self) -> dict:
        present = self.counts > 0
        return {
            "n": self.n,
            **{f"top{k}": v for k, v in self.topk.items()},
            "mean_per_class": self.mean_per_class,
            "worst_class_accuracy": float(self.per_class[present].min()),
            "per_class": [None if not c else float(a) for a, c in zip(self.per_class, self.counts)],
        }


def _true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) 0-based rank of each sample's true class: #classes with a larger logit + #lower-index
    classes with an equal one."""
    true = logits.gather(1, labels[:, None])
    lower = torch.arange(logits.shape[1])[None, :] < labels[:, None]
    return ((logits > true) | ((logits == true) & lower)).sum(1)


def classification_accuracy(
    logits, labels, ks: Sequence[int] = (1, 5), num_classes: int | None = None, chunk: int = 4096
) -> ClassificationResult:
    """Top-k accuracy for each k in `ks` and per-class top-1 accuracy.

    logits: (N, C) class scores (any monotone transform, e.g. probabilities, gives the same result);
    labels: (N,) integer classes in [0, C); num_classes: C for the per-class arrays (default: the
    logits' width). Computed in chunks of `chunk` rows.
    """
    z = torch.as_tensor(np.asarray(logits))
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"logits: expected a non-empty (N, C) array, got shape {tuple(z.shape)}")
    n, c = z.shape
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: expected ({n},) integers like the logits' rows, got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels: classes must lie in [0, {c}) (the logits' width), got {y.min()}..{y.max()}")
    c_out = c if num_classes is None else int(num_classes)
    if c_out < c:
        raise ValueError(f"num_classes={c_out} is smaller than the logits' width {c}")
    bad = [k for k in ks if not 1 <= k <= c]
    if bad:
        raise ValueError(f"top-k needs 1 <= k <= {c} (the number of classes), got k={bad}")
    if not torch.isfinite(z).all():
        rows = torch.nonzero(~torch.isfinite(z).all(1)).flatten()
        raise ValueError(f"logits: {rows.numel()} rows contain NaN or inf (first: {rows[:5].tolist()})")
    yt = torch.from_numpy(y.astype(np.int64))
    rank = torch.cat([_true_class_rank(z[s : s + chunk], yt[s : s + chunk]) for s in range(0, n, chunk)]).numpy()
    counts = np.bincount(y, minlength=c_out)
    correct = np.bincount(y, weights=(rank == 0).astype(np.float64), minlength=c_out)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, correct / counts, np.nan)
    return ClassificationResult({int(k): float(np.mean(rank < k)) for k in ks}, per_class, counts)


__all__ = ["ClassificationResult", "classification_accuracy"]
