"""Gradient scaling: the same forward value, a rescaled backward pass."""

from __future__ import annotations

import torch

__all__ = ["scale_grad"]


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass.

    The Distiller divides PAD's variance-branch gradient by λ·warm-up with it; a metric task
    weighs the center loss's feature gradient with it.
    """
    return x * scale + x.detach() * (1.0 - scale)
