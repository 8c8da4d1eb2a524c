"""Pairwise distances shared by the relation losses (RKD, CC, DarkRank, EKD)."""

from __future__ import annotations

import torch

__all__ = ["pdist"]


def pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances (B, B) of the rows of e (B, D), with an exact zero diagonal (the
    RKD authors' `pdist`); squared distances when `squared`. Squares are clamped at `eps`."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * e @ e.t()).clamp(min=eps)
    d = d2 if squared else d2.sqrt()
    return d * (1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype))
