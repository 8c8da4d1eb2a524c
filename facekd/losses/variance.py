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

import math

import torch
from torch import nn

__all__ = ["ConvVarianceBranch", "PadBranches", "VarianceBranch", "pad_log_variance"]


def pad_log_variance(logvar: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log σ² with σ² = exp(logvar) + eps, computed stably as logaddexp(logvar, log eps).

    The variance floor eps (torchdistill's PADL2Loss adds 1e-6 to exp(s) too) bounds the weight
    1/σ² ≤ 1/eps, so a branch that drives s → −∞ cannot overflow the loss; for large s nothing
    overflows either (exp(−s) underflows to 0).
    """
    return torch.logaddexp(logvar, torch.tensor(math.log(eps), dtype=logvar.dtype, device=logvar.device))


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


class PadBranches:
    """The Distiller's PAD variance branches, as a PAD-compatible loss builds and reads them.

    The ModuleList belongs to the Distiller (state_dict keys ``var_branches.<k>.*``); the loss adds
    one branch per regressed quantity while it builds its own modules (so parameters are created in
    the order the loss needs them) and later asks for the log-variance of branch k.

    per_dim: σ per regressed element (True) or one σ per sample (False, broadcast by the loss).
    detach: the branch reads a detached student output, so the student is trained only by the
        1/σ²-weighted error (see docs/distillation.md).
    var_eps: the variance floor of `pad_log_variance`.
    """

    def __init__(self, branches: nn.ModuleList, per_dim: bool, init_logvar: float, detach: bool, var_eps: float = 1e-6):
        self.branches, self.per_dim, self.init_logvar, self.detach = branches, per_dim, init_logvar, detach
        self.var_eps = var_eps

    def add_linear(self, dim: int) -> int:
        """A `VarianceBranch` for a (B, dim) quantity; returns its index."""
        self.branches.append(VarianceBranch(dim, dim if self.per_dim else 1, self.init_logvar))
        return len(self.branches) - 1

    def add_conv(self, channels: int) -> int:
        """A `ConvVarianceBranch` for a (B, channels, H, W) map; returns its index."""
        self.branches.append(ConvVarianceBranch(channels, channels if self.per_dim else 1, self.init_logvar))
        return len(self.branches) - 1

    def log_variance(self, logvar: torch.Tensor) -> torch.Tensor:
        """log σ² with the variance floor: σ² = exp(logvar) + var_eps (`pad_log_variance`)."""
        return pad_log_variance(logvar, self.var_eps)

    def logvar(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """log σ² of branch `index` for the student quantity x: (B, D) or (B, 1) (maps are flattened
        per element, or averaged over positions for one σ per sample)."""
        lv = self.branches[index](x.detach() if self.detach else x)
        if lv.dim() == 4:
            return lv.flatten(1) if self.per_dim else lv.mean(dim=(2, 3)).flatten(1)
        return lv
