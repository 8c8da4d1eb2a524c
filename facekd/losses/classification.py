"""Per-sample classification losses on head logits: CE, Focal, Class-Balanced, LDAM.

Every loss maps `(logits (B, C), labels (B,) int64) -> (B,)` per-sample values; the caller
reduces them (the trainer takes the mean). These are the loss re-weighting baselines of Table 5 in
"Rectifying the Data Bias in Knowledge Distillation":

- Focal loss (Lin et al. 2017): ``-(1 - p_t)^γ log p_t``, γ default 2.
- Class-Balanced loss (Cui et al. 2019): class weight ``w_c ∝ (1 - β) / (1 - β^{n_c})`` (inverse of
  the effective number of samples), β default 0.9999, weights normalised to sum to C, applied per
  sample on top of CE (default) or Focal.
- LDAM (Cao et al. 2019): per-class margin ``m_c = C_max · (n_c^{-1/4} / max_c' n_c'^{-1/4})``, so
  the rarest class gets the largest margin C_max (default 0.5).

How LDAM composes with the face head (our reading): LDAM is a cosine head with a *per-class*
additive margin on the target logit, i.e. CosFace with m replaced by m_y. We therefore implement it
as a loss on the logits ``s · cos θ`` of a margin-free normalised head, e.g.
``heads.get_head("cosface", d, C, s=64, m=0.0)``: the loss subtracts ``s · m_y`` from the target
logit and takes cross-entropy. This keeps the head (and its checkpoint) unchanged and lets the
same trainer code run every baseline. The scale `s` given to the loss must equal the head's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ClassBalancedLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LDAMLoss",
    "class_balanced_weights",
    "get_cls_loss",
    "ldam_margins",
]


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits: expected (B, C), got shape {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels: expected shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(
            f"labels: values must lie in [0, {logits.shape[1]}), got range [{int(labels.min())}, {int(labels.max())}]"
        )


def _counts(class_counts: Sequence[int] | np.ndarray | torch.Tensor | None, name: str) -> np.ndarray:
    if class_counts is None:
        raise ValueError(f"{name}: class_counts (images per class, shape (C,)) is required")
    counts = np.asarray(class_counts.cpu() if isinstance(class_counts, torch.Tensor) else class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"{name}: class_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if (counts < 0).any():
        bad = np.flatnonzero(counts < 0)
        raise ValueError(f"{name}: class_counts has negative values at classes {bad[:5].tolist()}")
    if not (counts > 0).any():
        raise ValueError(f"{name}: class_counts are all zero")
    return counts.astype(np.float64)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half / bf16 logits are computed in float32; float32 and float64 are kept."""
    return x if x.dtype == torch.float64 else x.float()


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy per sample: ``-log softmax(z)_y``. (B, C), (B,) -> (B,)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check(logits, labels)
        return F.cross_entropy(_upcast(logits), labels, reduction="none")


class FocalLoss(nn.Module):
    """Focal loss per sample: ``-(1 - p_y)^γ log p_y`` (γ = 0 is CE). (B, C), (B,) -> (B,)."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check(logits, labels)
        logp = F.log_softmax(_upcast(logits), dim=1).gather(1, labels[:, None]).squeeze(1)
        if self.gamma == 0:
            return -logp
        return -((1.0 - logp.exp()).clamp_min(0.0) ** self.gamma) * logp


def class_balanced_weights(class_counts, beta: float = 0.9999) -> np.ndarray:
    """Class-Balanced weights (Cui et al. 2019): ``w_c = (1-β)/(1-β^{n_c})``, normalised to sum C.

    `class_counts`: (C,) images per class. Classes with n_c = 0 never occur as labels; they get
    weight 0 and the others are normalised to sum to the number of non-empty classes.
    Returns float64 (C,).
    """
    counts = _counts(class_counts, "class_balanced_weights")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced: beta must lie in [0, 1), got {beta}")
    present = counts > 0
    w = np.zeros_like(counts)
    # (1-β)/(1-β^n) computed stably: -expm1(n·log β) = 1-β^n.
    if beta == 0.0:
        w[present] = 1.0
    else:
        w[present] = (1.0 - beta) / -np.expm1(counts[present] * np.log(beta))
    return w * (present.sum() / w.sum())


class ClassBalancedLoss(nn.Module):
    """Class-Balanced loss per sample: ``w_y · base(z, y)``; base is CE or Focal. (B,C),(B,) -> (B,)."""

    weights: torch.Tensor

    def __init__(self, class_counts, beta: float = 0.9999, base: str = "ce", gamma: float = 2.0):
        super().__init__()
        if base not in ("ce", "focal"):
            raise ValueError(f"class-balanced: base must be 'ce' or 'focal', got {base!r}")
        self.base = CrossEntropyLoss() if base == "ce" else FocalLoss(gamma)
        self.register_buffer("weights", torch.tensor(class_balanced_weights(class_counts, beta), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 2 and logits.shape[1] != self.weights.numel():
            raise ValueError(
                f"class-balanced: logits have {logits.shape[1]} classes, class_counts {self.weights.numel()}"
            )
        return self.weights[labels] * self.base(logits, labels)


def ldam_margins(class_counts, max_margin: float = 0.5) -> np.ndarray:
    """LDAM margins ``m_c ∝ n_c^{-1/4}`` scaled so that ``max_c m_c = max_margin``. (C,) float64.

    Classes with n_c = 0 get margin 0 (they never occur as labels).
    """
    counts = _counts(class_counts, "ldam_margins")
    if max_margin < 0:
        raise ValueError(f"ldam: max_margin must be >= 0, got {max_margin}")
    m = np.zeros_like(counts)
    present = counts > 0
    m[present] = counts[present] ** -0.25
    return m * (max_margin / m.max())


class LDAMLoss(nn.Module):
    """LDAM per sample: ``CE(z - s·m_y·onehot(y), y)`` on logits ``z = s·cos θ`` of a margin-free head.

    (B, C), (B,) -> (B,). Optional Class-Balanced re-weighting (`reweight_beta`, the "DRW" weights
    of the LDAM paper applied from the start; default None = no re-weighting).
    """

    margins: torch.Tensor
    weights: torch.Tensor | None

    def __init__(self, class_counts, s: float = 64.0, max_margin: float = 0.5, reweight_beta: float | None = None):
        super().__init__()
        if s <= 0:
            raise ValueError(f"ldam: scale s must be > 0, got {s}")
        self.s = float(s)
        self.register_buffer("margins", torch.tensor(ldam_margins(class_counts, max_margin), dtype=torch.float32))
        w = class_balanced_weights(class_counts, reweight_beta) if reweight_beta is not None else None
        self.register_buffer("weights", None if w is None else torch.tensor(w, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check(logits, labels)
        if logits.shape[1] != self.margins.numel():
            raise ValueError(f"ldam: logits have {logits.shape[1]} classes, class_counts {self.margins.numel()}")
        z = _upcast(logits)
        z = z.scatter_add(1, labels[:, None], (-self.s * self.margins[labels]).to(z.dtype)[:, None])
        loss = F.cross_entropy(z, labels, reduction="none")
        return loss if self.weights is None else self.weights[labels] * loss


def get_cls_loss(name: str, class_counts=None, **kw) -> nn.Module:
    """Build a per-sample classification loss: (logits (B, C), labels (B,)) -> (B,).

    name: "ce"; "focal" (gamma=2.0); "cb" (class_counts, beta=0.9999, base="ce"|"focal", gamma);
    "ldam" (class_counts, s=64.0, max_margin=0.5, reweight_beta=None; logits from a margin-free
    normalised head with the same s, see the module docstring).
    """
    if name == "ce":
        if kw:
            raise ValueError(f"ce: unexpected options {sorted(kw)}")
        return CrossEntropyLoss()
    if name == "focal":
        return FocalLoss(**kw)
    if name == "cb":
        return ClassBalancedLoss(class_counts, **kw)
    if name == "ldam":
        return LDAMLoss(class_counts, **kw)
    raise ValueError(f"unknown classification loss {name!r}: expected one of ce, focal, cb, ldam")
