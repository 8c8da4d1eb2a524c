"""Margin-softmax logits against given class centres, for the losses that live in a margin head
(AdaDistill, MarginDistillation). Not a loss itself.

The target logit is s·cos(θ_y + m) (ArcFace) or s·(cos θ_y − m) (CosFace), with m a number or one
margin per sample. cos(θ + m) is computed as cos θ·cos m − sin θ·sin m with
sin θ = sqrt(clamp(1 − cos² θ, 1e-7)), as facekd.models.heads does, so gradients stay finite at
cos θ = ±1; past θ + m > π the value is cos(θ + m) itself (what the public code of both papers
computes with arccos / cos).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F

from facekd.utils import load_torch

__all__ = ["MarginKind", "check_labels", "load_class_centres", "margin_logits"]

MarginKind = Literal["arcface", "cosface"]
_EPS = 1e-7


def check_labels(labels: torch.Tensor, num_classes: int, name: str) -> None:
    """ValueError unless labels are (B,) integers in [0, num_classes)."""
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: labels must be (B,) int64, got {tuple(labels.shape)} {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name}: labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
        )


def margin_logits(
    embeddings: torch.Tensor,
    centres: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor,
    scale: float,
    kind: MarginKind = "arcface",
) -> torch.Tensor:
    """embeddings (B, D), centres (C, D), labels (B,), margin float or (B,) → logits (B, C):
    s·cos θ_j, and on the target s·cos(θ_y + m) (arcface) or s·(cos θ_y − m) (cosface).
    Computed in float32 (float64 inputs stay float64) with autocast off."""
    dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        e, w = F.normalize(embeddings.to(dtype), dim=1), F.normalize(centres.to(dtype), dim=1)
        cos = F.linear(e, w).clamp(-1.0, 1.0)
        rows = torch.arange(len(labels), device=labels.device)
        c = cos[rows, labels]
        m = torch.as_tensor(margin, dtype=cos.dtype, device=cos.device)
        if kind == "arcface":
            target = c * torch.cos(m) - torch.sqrt(torch.clamp(1.0 - c * c, min=_EPS)) * torch.sin(m)
        else:
            target = c - m
        return scale * cos.index_put((rows, labels), target)


def load_class_centres(value: torch.Tensor | str | os.PathLike, name: str) -> torch.Tensor:
    """The teacher's (C, D) class centres from a tensor or a file holding one: a saved (C, D) tensor
    or a head state_dict with `weight` (C, D) (facekd's head.pth, an insightface softmax weight).
    Loaded with torch.load(weights_only=True). A float32 (float64 stays float64) copy."""
    if isinstance(value, (str, os.PathLike)):
        obj = load_torch(value, f"{name} class_centres file")
        if isinstance(obj, dict) and isinstance(obj.get("weight"), torch.Tensor):
            obj = obj["weight"]
        if not isinstance(obj, torch.Tensor):
            kind = f"dict with keys {list(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{name}: {value} holds {kind}; expected a (C, D) tensor or a state_dict with 'weight'")
        value = obj
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or min(value.shape) < 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name}: class_centres must be a (C, D) tensor, got {shape}")
    return value.detach().to(torch.float64 if value.dtype == torch.float64 else torch.float32).clone()
