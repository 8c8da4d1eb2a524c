"""`fitnet`: FitNets' hint regression of the teacher's stage maps."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from facekd.losses.distill.base import (
    Features,
    LossContext,
    MapLoss,
    MapOptions,
    check_pair,
    match_spatial,
    register_loss,
)
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["FitNetDistill", "FitNetHint", "FitNetOptions"]


class FitNetHint(nn.Module):
    """FitNet hint ("FitNets: Hints for Thin Deep Nets", Romero et al. 2015, arXiv 1412.6550):
    1×1 conv + BN regressor, student map → teacher channels.

    forward(fs (B, C_s, H, W), ft (B, C_t, H', W')) → (regressed map (B, C_t, H', W'),
    elementwise squared error (B, C_t·H'·W')). The regressed map is what PAD's 1×1-conv variance
    branch reads.
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.reg = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(teacher_channels),
        )

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.reg(match_spatial(fs, ft.shape[-2:]))
        check_pair(r, ft, "fitnet (regressed student map vs teacher map)")
        return r, (r - ft).pow(2).flatten(1)


class FitNetOptions(MapOptions):
    layers: list[int] | None = Field(default_factory=lambda: [-1], description="stage maps used (default the last)")


@register_loss("fitnet")
class FitNetDistill(MapLoss):
    """Elementwise squared error of a 1×1 conv + BN regression of the chosen student stage maps onto
    the teacher's (B, C_t·H·W) per stage; the student map is resized (bilinear) to the teacher's
    size when they differ. With PAD, a `ConvVarianceBranch` (1×1 conv + BN) reads each student map
    beside its regressor (resized like it), or the regressed map (`branch_input: regressed`)."""

    Options = FitNetOptions
    pad_compatible = True

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        self.pad = ctx.pad
        self.hints = nn.ModuleList()
        self.branches: list[int] = []
        for (cs, _, _), (ct, ht, wt) in self.stages(ctx):
            self.hints.append(FitNetHint(cs, ct))
            if ctx.pad is not None:
                source = cs if ctx.pad.reads_backbone else ct
                self.branches.append(ctx.pad.add_conv(source, ct, ht * wt))

    @classmethod
    def requires_shapes(cls, pad: bool) -> bool:
        return True

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        terms = []
        for k, (fs, ft) in enumerate(zip(*self.select(student, teacher))):
            mu, values = self.hints[k](fs, ft)
            m = self.stage_mask(mask, ft.shape[-2:], ft.shape[1])
            logvar = None
            if self.pad is not None:
                x = match_spatial(fs, ft.shape[-2:]) if self.pad.reads_backbone else mu
                positions = self.stage_mask(mask, ft.shape[-2:], 1)
                logvar = self.pad.logvar(self.branches[k], x, positions)
            terms.append(Term(values, m, logvar))
        return terms
