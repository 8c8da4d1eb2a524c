"""Classification heads for face training: ArcFace, CosFace and plain softmax.

Every head holds the class-centre matrix `weight` (C, d), initialised N(0, 0.01) like insightface's
PartialFC, and maps `(embeddings (B, d) raw, labels (B,) int64) → logits (B, C)` with the margin on
the target logit (the loss is the caller's: facekd.losses.classification). A label of -1 means "no
target in this row" (no margin is applied), as in PartialFC. Logits are computed in float32 with
autocast off (`float32_region`), so a bf16 / fp16 network never moves the margin or the logits.
`MarginHead.logits(x, labels, weight)` computes them against any rows of centres: the sharded
head (`facekd.models.partial_fc`) passes its own, sampled, rows.

- ArcFace (Deng et al. 2019):  s · cos(θ_y + m) on the target, s · cos θ_j elsewhere; s=64, m=0.5.
- CosFace (Wang et al. 2018):  s · (cos θ_y − m) on the target; s=64, m=0.4.
- softmax: W x + b (no normalisation, no margin, `s`/`m` unused).

ArcFace and θ + m > π (option `overflow`). cos(θ + m) stops decreasing in θ once θ + m > π, so the
target logit of a very wrong sample would *rise* as it gets worse. The choices:
- "cosface" (default, the original ArcFace code's `th`/`mm` rule): for θ > π − m use
  cos θ − m·sin m, a CosFace-like margin that keeps the target logit decreasing in θ and its
  gradient non-zero. Defended as the default because it is what the ArcFace authors shipped and it
  never rewards getting worse; the price is a jump of (1 − cos m − m sin m) at θ = π − m.
- "easy": margin only where cos θ > 0 (the "easy margin" of the original code).
- "none": cos(θ + m) everywhere (the values arcface_torch computes; non-monotone past π − m).
cos(θ + m) is computed differentiably as cos θ·cos m − sin θ·sin m with sin θ = sqrt(clamp(1 − cos²θ,
eps)), eps = 1e-7, so gradients stay finite at cos θ = ±1. The floor sin θ ≥ 3.2e-4 shifts the
target logit by at most s·sin m·3.2e-4 ≈ 0.01 at θ ≈ 0, where float32 cannot resolve θ better
anyway. (arcface_torch instead applies arccos/+m/cos in place under no_grad, i.e. a
straight-through gradient; we do not copy that.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-7


def float32_region(x: torch.Tensor) -> AbstractContextManager:
    """A block where autocast is off on `x`'s device: the margin, the logits and the losses read
    from them are computed in float32 whatever the networks run in (bf16 / fp16 autocast)."""
    return torch.autocast(x.device.type, enabled=False)


class _CentreHead(nn.Module):
    """Holds `weight` (C, d) ~ N(0, 0.01); `cosine(x[, weight])` gives cos θ (B, C) in float32."""

    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"need embedding_size ≥ 1 and num_classes ≥ 1, got {embedding_size}, {num_classes}")
        self.embedding_size, self.num_classes = int(embedding_size), int(num_classes)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size).normal_(0, 0.01))

    def _check(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.embedding_size:
            raise ValueError(
                f"{type(self).__name__}: expected embeddings (B, {self.embedding_size}), got {tuple(x.shape)}"
            )
        if labels.shape != (x.shape[0],):
            raise ValueError(f"{type(self).__name__}: expected labels ({x.shape[0]},), got {tuple(labels.shape)}")

    def cosine(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """cos θ (B, C') between embeddings x (B, d) and centres `weight` (C', d) (default: all), float32."""
        w = self.weight if weight is None else weight
        with float32_region(x):
            return F.linear(F.normalize(x.float(), dim=1), F.normalize(w.float(), dim=1)).clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"


def _with_target(cos: torch.Tensor, labels: torch.Tensor, target_fn: Callable) -> torch.Tensor:
    """cos with cos[i, labels[i]] replaced by target_fn(cos[i, labels[i]]) on rows with labels ≥ 0.

    Written with gather / scatter on every row (rows without a target write their own value
    back), so that no data-dependent shape, hence no host synchronisation, is needed."""
    has_target = (labels >= 0)[:, None]
    cols = labels.clamp(min=0)[:, None]
    old = cos.gather(1, cols)
    return cos.scatter(1, cols, torch.where(has_target, target_fn(old), old))


class MarginHead(_CentreHead):
    """A normalised head with scale `s` and margin `m` on the target logit:
    logits = s · cos θ_j, target s · target(cos θ_y). Subclasses define `target`."""

    s: float
    m: float

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        """Margin-applied target cosine, same shape as `cos`."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """s · cos θ (B, C') against `weight` (C', d) (default: all centres) with the margin on each
        row's target column (labels ≥ 0; -1 = none), float32 with autocast off."""
        with float32_region(x):
            return self.s * _with_target(self.cosine(x, weight), labels, self.target)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings (B, d) raw, labels (B,) int64 (-1 = none) → logits (B, C) float32."""
        self._check(embeddings, labels)
        return self.logits(embeddings, labels)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", s={self.s}, m={self.m}"


class ArcFaceHead(MarginHead):
    """logits = s · cos θ_j, target s · cos(θ_y + m) (see module doc for `overflow`)."""

    OVERFLOW = ("cosface", "easy", "none")

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5, overflow: str = "cosface"
    ):
        super().__init__(embedding_size, num_classes)
        if overflow not in self.OVERFLOW:
            raise ValueError(f"ArcFace overflow must be one of {self.OVERFLOW}, got {overflow!r}")
        if not 0 <= m < math.pi / 2:
            raise ValueError(f"ArcFace margin m must be in [0, π/2) radians, got {m}")
        self.s, self.m, self.overflow = float(s), float(m), overflow

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        """cos(θ + m) = cos θ·cos m − sin θ·sin m, with the `overflow` rule past θ = π − m."""
        sin = torch.sqrt(torch.clamp(1.0 - cos * cos, min=_EPS))
        phi = cos * math.cos(self.m) - sin * math.sin(self.m)
        if self.overflow == "cosface":
            return torch.where(cos > math.cos(math.pi - self.m), phi, cos - self.m * math.sin(self.m))
        if self.overflow == "easy":
            return torch.where(cos > 0, phi, cos)
        return phi

    def extra_repr(self) -> str:
        return super().extra_repr() + f", overflow={self.overflow!r}"


class CosFaceHead(MarginHead):
    """logits = s · cos θ_j, target s · (cos θ_y − m)."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.4):
        super().__init__(embedding_size, num_classes)
        self.s, self.m = float(s), float(m)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m


class SoftmaxHead(_CentreHead):
    """Plain linear classifier W x + b (no normalisation, no margin). Labels are only checked."""

    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__(embedding_size, num_classes)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings (B, d), labels (B,) → logits (B, C) float32."""
        self._check(embeddings, labels)
        with float32_region(embeddings):
            return F.linear(embeddings.float(), self.weight.float(), self.bias.float())


_HEADS: dict[str, tuple[type, dict]] = {
    "arcface": (ArcFaceHead, {"m": 0.5}),
    "cosface": (CosFaceHead, {"m": 0.4}),
    "softmax": (SoftmaxHead, {}),
}


def register_head(name: str, cls: type, **defaults) -> None:
    """Add a head class `cls(embedding_size, num_classes, **kw)` under `name` (e.g. LDAM variants)."""
    if name in _HEADS:
        raise ValueError(f"head {name!r} is already registered")
    _HEADS[name] = (cls, defaults)


def get_head(
    name: str, embedding_size: int, num_classes: int, s: float = 64.0, m: float | None = None, **kw
) -> nn.Module:
    """Build a head: "arcface" (m default 0.5 rad), "cosface" (m default 0.4), "softmax" (s, m ignored).

    forward(embeddings (B, d), labels (B,)) → logits (B, C). Extra keywords go to the class
    (e.g. overflow="easy" for ArcFace).
    """
    try:
        cls, defaults = _HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; known: {', '.join(sorted(_HEADS))}") from None
    if cls is SoftmaxHead:
        return cls(embedding_size, num_classes, **kw)
    args = {**defaults, "s": s, **kw}
    if m is not None:
        args["m"] = m
    return cls(embedding_size, num_classes, **args)
