"""PAD variance branch: predicts log σ² for each sample (and dimension) from the student's output.

"Prime-Aware Adaptive Distillation" (Zhang et al., ECCV 2020), Sec. 4 and 5.1: "When combined with
L2 and AT, PAD adopts a fully connected (FC) layer, followed by a batch normalization (BN) layer to
generate variance. When combined with FitNet, PAD adopts a 1×1 convolutional layer followed by a BN
layer." The branch exists only in training: it is held by the `Distiller`, never by the student,
so it is never part of `backbone.pth` or an ONNX export.

The output is the *log*-variance s = log σ² (as in torchdistill's `PADL2Loss`), so σ² = exp(s) is
positive without clamping. At initialisation BN has weight 1 and bias `init_logvar` (default 0),
so the batch mean of the predicted log-variance starts at `init_logvar` (σ² ≈ 1).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvVarianceBranch", "VarianceBranch"]


class VarianceBranch(nn.Module):
    """FC + BN1d: (B, in_dim) → log σ² (B, out_dim).

    out_dim = the regressed dimension D for a per-dimension σ (the default of PAD's public code),
    or 1 for one σ per sample (broadcast over dimensions by the loss).
    """

    def __init__(self, in_dim: int, out_dim: int, init_logvar: float = 0.0):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"VarianceBranch: in_dim and out_dim must be ≥ 1, got {in_dim}, {out_dim}")
        self.fc = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        nn.init.constant_(self.bn.bias, init_logvar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"VarianceBranch expects (B, D) input, got shape {tuple(x.shape)}")
        return self.bn(self.fc(x))


class ConvVarianceBranch(nn.Module):
    """1×1 conv + BN2d: feature map (B, C_in, H, W) → log σ² (B, C_out, H, W).

    C_out = the regressed channel count for per-element σ, or 1 for one σ per spatial position
    (per-sample-per-position; broadcast over channels by the loss).
    """

    def __init__(self, in_channels: int, out_channels: int, init_logvar: float = 0.0):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"ConvVarianceBranch: channel counts must be ≥ 1, got {in_channels}, {out_channels}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.bias, init_logvar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ConvVarianceBranch expects (B, C, H, W) input, got shape {tuple(x.shape)}")
        return self.bn(self.conv(x))
