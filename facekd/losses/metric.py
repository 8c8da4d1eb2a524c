"""Metric-learning losses for re-ID (bag-of-tricks, reid-strong-baseline): batch-hard triplet, center.

Both return per-sample `(B,)` values; the caller reduces (mean) and weights them
(bag-of-tricks: triplet margin 0.3, center-loss weight 5e-4 with its own SGD, lr 0.5).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, d), (M, d) → (B, M) Euclidean distance, sqrt(clamp(‖x‖² + ‖y‖² − 2x·y, 1e-12)) as RSB."""
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return d.clamp(min=1e-12).sqrt()


def batch_hard_triplet(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3, normalize: bool = False
) -> torch.Tensor:
    """Batch-hard triplet loss per anchor (Hermans et al. 2017), embeddings (B, d), labels (B,) → (B,).

    For anchor i: d_ap = max distance to another sample of its label, d_an = min distance to a
    sample of another label (Euclidean). Loss = relu(d_ap − d_an + margin), or with
    margin=None the soft margin softplus(d_ap − d_an). Anchors without a positive or without a
    negative in the batch get 0 (the PK sampler guarantees both). `normalize` L2-normalises first.
    """
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"batch_hard_triplet: embeddings {tuple(embeddings.shape)} and labels "
            f"{tuple(labels.shape)} must be (B, d) and (B,)"
        )
    x = F.normalize(embeddings, dim=1) if normalize else embeddings
    dist = pairwise_euclidean(x, x)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(1)
    d_an = dist.masked_fill(~neg, float("inf")).amin(1)
    valid = pos.any(1) & neg.any(1)
    gap = torch.where(valid, d_ap - d_an, torch.zeros_like(d_ap))
    loss = F.softplus(gap) if margin is None else F.relu(gap + margin)
    return torch.where(valid, loss, torch.zeros_like(loss))


class TripletLoss(nn.Module):
    """Module form of `batch_hard_triplet`: forward(embeddings (B, d), labels (B,)) → (B,)."""

    def __init__(self, margin: float | None = 0.3, normalize: bool = False):
        super().__init__()
        self.margin, self.normalize = margin, normalize

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return batch_hard_triplet(embeddings, labels, self.margin, self.normalize)


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): per-sample ‖x_i − c_{y_i}‖², centres (C, d) ~ N(0, 1) learnt.

    forward(features (B, d), labels (B,)) → (B,). RSB's version sums these over the batch and
    divides by B, i.e. the mean of this output.
    """

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.centers.shape[1]:
            raise ValueError(f"CenterLoss: features {tuple(features.shape)}, expected (B, {self.centers.shape[1]})")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.centers.shape[0]):
            raise ValueError(f"CenterLoss: labels must lie in [0, {self.centers.shape[0]})")
        return (features - self.centers[labels]).pow(2).sum(1)
