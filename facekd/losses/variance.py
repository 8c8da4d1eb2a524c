"""PAD variance branch: predicts log σ² for each sample (and dimension) beside the student's output.

"Prime-Aware Adaptive Distillation" (Zhang et al., ECCV 2020, arXiv 2008.01458), Sec. 4: "the only
modification is the addition of a variance branch parallel with f_s(x)"; Sec. 5.1: "When combined
with L2 and AT, PAD adopts a fully connected (FC) layer, followed by a batch normalization (BN)
layer to generate variance. When combined with FitNet, PAD adopts a 1×1 convolutional layer
followed by a BN layer." The branch exists only in training: it is held by the `Distiller`, never
by the student, so it is never part of `backbone.pth` or an ONNX export.

What the branch reads (`branch_input`):

- ``backbone`` (default): the feature the student's own output is computed from, so that the branch
  runs *parallel* to f_s. For L2 on the embedding this is the input of the student's embedding
  layer (the module a backbone names in its `embedding_layer` attribute: IResNet's `fc`, reading the
  flattened last stage map; MobileFaceNet's GDC `features`, reading the `conv_sep` map; the pooled
  feature of the re-ID nets and `small_cnn`), captured by a forward pre-hook (`BackboneTap`): the
  student's forward is unchanged. For FitNet and AT it is the student's stage map (the input of the
  1×1 regressor, or of the attention map).
- ``regressed``: the regressed student quantity itself (the projected, normalised embedding, the
  regressed map, the attention vector).

Not detached by default (`detach: false`, as the public code): the branch's gradient also reaches the
student's backbone. The output is the *log*-variance s = log σ² (as in torchdistill's `PADL2Loss`),
so σ² = exp(s) is positive without clamping; BN's bias starts at `init_logvar`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "BRANCH_INPUTS",
    "BackboneTap",
    "ConvVarianceBranch",
    "PadBranches",
    "VarianceBranch",
    "clip_norm",
    "embedding_layer",
    "pad_log_variance",
    "probe_backbone_dim",
]

BRANCH_INPUTS = ("backbone", "regressed")


def clip_norm(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """grad scaled down to norm ≤ max_norm (unchanged when already within it)."""
    return grad * torch.clamp(max_norm / (grad.norm() + 1e-12), max=1.0)


def pad_log_variance(logvar: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log σ² with σ² = exp(logvar) + eps, computed stably as logaddexp(logvar, log eps).

    The variance floor eps (torchdistill's PADL2Loss adds 1e-6 to exp(s) too) bounds the weight
    1/σ² ≤ 1/eps, so a branch that drives s → −∞ cannot overflow the loss; for large s nothing
    overflows either (exp(−s) underflows to 0).
    """
    return torch.logaddexp(logvar, torch.tensor(math.log(eps), dtype=logvar.dtype, device=logvar.device))


class VarianceBranch(nn.Module):
    """FC + BN1d: (B, in_dim) → log σ² (B, out_dim).

    out_dim = the regressed dimension D for a per-dimension σ, or 1 for one σ per sample
    (broadcast over dimensions by the loss).
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
    (averaged over positions for one σ per sample).
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


# --------------------------------------------------------------------------------------------
# the backbone feature beside the embedding layer
# --------------------------------------------------------------------------------------------


def embedding_layer(model: nn.Module) -> nn.Module:
    """The student's embedding layer: the submodule named by `model.embedding_layer`, whose input is
    the backbone feature PAD's branch reads. ValueError (one line) when the model names none."""
    name = getattr(model, "embedding_layer", None)
    layer = model.get_submodule(name) if isinstance(name, str) and name else None
    if layer is None:
        raise ValueError(
            f"{type(model).__name__} names no embedding layer (attribute `embedding_layer`), so PAD's variance "
            "branch cannot read the backbone feature beside it: set `embedding_layer` on the model, or use "
            "distill options {branch_input: regressed}"
        )
    return layer


class BackboneTap:
    """Keeps the input of the student's embedding layer from its latest forward (a forward pre-hook;
    the student's forward and outputs are unchanged). `take()` returns it flattened (B, F) and
    forgets it, so a stale feature is never used twice."""

    def __init__(self, model: nn.Module):
        self.layer_name = str(getattr(model, "embedding_layer", ""))
        self.value: torch.Tensor | None = None
        self.handle = embedding_layer(model).register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple) -> None:
        self.value = inputs[0]

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise ValueError(
                f"PAD: the student's embedding layer {self.layer_name!r} did not run in this forward, so there is "
                "no backbone feature for the variance branch (use distill options {branch_input: regressed})"
            )
        return value.flatten(1)

    def remove(self) -> None:
        self.handle.remove()


def probe_backbone_dim(model: nn.Module, input_size: int | tuple[int, int], in_channels: int = 3) -> int:
    """Width of the flattened input of `model`'s embedding layer for inputs of `input_size`, by one
    dummy forward of 2 images in eval mode (no BN statistics change)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    tap = BackboneTap(model)
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        with torch.no_grad():
            model(torch.zeros(2, in_channels, h, w, device=p.device if p is not None else "cpu"))
        return int(tap.take().shape[1])
    finally:
        tap.remove()
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# the branches of one Distiller
# --------------------------------------------------------------------------------------------


class PadBranches:
    """The Distiller's PAD variance branches, as a PAD-compatible loss builds and reads them.

    The ModuleList belongs to the Distiller (state_dict keys ``var_branches.<k>.*``); the loss adds
    one branch per regressed quantity while it builds its own modules (so parameters are created in
    the order the loss needs them) and later asks for the log-variance of branch k.

    per_dim: σ per regressed element (True) or one σ per sample (False, broadcast by the loss).
    init_logvar: BN bias at init, as a function of the number of regressed elements per sample
        (PAD's `init_logvar: auto` starts PAD at its uniform baseline's weight).
    detach: the branch reads a detached input, so only the 1/σ²-weighted error trains the student.
    branch_input: "backbone" (the feature beside the student's output) or "regressed" (the output).
    backbone_dim: width of the flattened backbone feature beside the embedding layer (L2 only).
    var_eps: the variance floor of `pad_log_variance`.
    lambda_free: the Distiller divides the gradient through the log-variance by λ·warm-up.
    grad_clip: each branch parameter's gradient is clipped to this norm (PAD's `branch_clip`).
    """

    def __init__(
        self,
        branches: nn.ModuleList,
        per_dim: bool,
        init_logvar: Callable[[int], float],
        detach: bool,
        branch_input: str = "backbone",
        backbone_dim: int | None = None,
        var_eps: float = 1e-6,
        lambda_free: bool = False,
        grad_clip: float | None = None,
    ):
        if branch_input not in BRANCH_INPUTS:
            raise ValueError(f"PAD branch_input must be one of {BRANCH_INPUTS}, got {branch_input!r}")
        self.branches, self.per_dim, self.init_logvar, self.detach = branches, per_dim, init_logvar, detach
        self.branch_input, self.backbone_dim, self.var_eps = branch_input, backbone_dim, var_eps
        self.lambda_free, self.grad_clip = lambda_free, grad_clip

    @property
    def reads_backbone(self) -> bool:
        return self.branch_input == "backbone"

    def embedding_input_dim(self, regressed_dim: int) -> int:
        """Input width of an embedding loss's branch: the backbone feature's, or the regressed width."""
        if not self.reads_backbone:
            return regressed_dim
        if self.backbone_dim is None:
            raise ValueError(
                "PAD reads the backbone feature beside the student's embedding layer: give the Distiller the "
                "student (Distiller.from_config(..., student=, input_size=)) or options.backbone_dim, or use "
                "options {branch_input: regressed}"
            )
        return self.backbone_dim

    def add_linear(self, in_dim: int, regressed: int) -> int:
        """A `VarianceBranch` reading (B, in_dim) for a (B, regressed) quantity; returns its index."""
        out = regressed if self.per_dim else 1
        return self._add(VarianceBranch(in_dim, out, self.init_logvar(regressed)))

    def add_conv(self, in_channels: int, channels: int, positions: int) -> int:
        """A `ConvVarianceBranch` reading a (B, in_channels, H, W) map for a (B, channels, H, W)
        quantity (positions = H·W); returns its index."""
        out = channels if self.per_dim else 1
        return self._add(ConvVarianceBranch(in_channels, out, self.init_logvar(channels * positions)))

    def _add(self, branch: nn.Module) -> int:
        """Append `branch` (its parameters' gradients clipped to `grad_clip`); returns its index."""
        if self.grad_clip is not None:
            for p in branch.parameters():
                p.register_hook(functools.partial(clip_norm, max_norm=self.grad_clip))
        self.branches.append(branch)
        return len(self.branches) - 1

    def log_variance(self, logvar: torch.Tensor) -> torch.Tensor:
        """log σ² with the variance floor: σ² = exp(logvar) + var_eps (`pad_log_variance`)."""
        return pad_log_variance(logvar, self.var_eps)

    def logvar(self, index: int, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """log σ² of branch `index` for the branch input x: (B, D) or (B, 1). Maps are flattened per
        element, or, for one σ per sample, averaged over the positions (weighted by `positions`
        (B, H·W), a spatial mask, when given: masked-out positions then do not count)."""
        lv = self.branches[index](x.detach() if self.detach else x)
        if lv.dim() != 4:
            return lv
        if self.per_dim:
            return lv.flatten(1)
        if positions is None:
            return lv.mean(dim=(2, 3)).flatten(1)
        flat = lv.flatten(1)
        return ((flat * positions).sum(dim=1) / positions.sum(dim=1).clamp(min=1e-12)).unsqueeze(1)
