"""`at`: attention transfer between stage maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from facekd.losses.distill.base import Features, LossContext, MapLoss, MapOptions, match_spatial, register_loss
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import Term

__all__ = ["ATDistill", "ATOptions", "at_elements", "attention_map"]


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Activation-based spatial attention ("Paying More Attention to Attention", Zagoruyko &
    Komodakis 2017, arXiv 1612.03928): (B, C, H, W) → (B, H·W).

    a = normalize(mean_c |F_c|^p) with the L2 norm over positions, as in the authors' code
    (``F.normalize(x.pow(2).mean(1).view(B, -1))`` for p = 2).
    """
    if f.dim() != 4:
        raise ValueError(f"attention_map expects (B, C, H, W), got {tuple(f.shape)}")
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_elements(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT loss per sample and position: (B, C_s, H, W), (B, C_t, H', W') → (B, H'·W').

    The elementwise squared difference of the attention maps; the authors' code takes the mean of
    it (dim_reduce="mean" reproduces that exactly). The student map is resized to the teacher's
    spatial size when they differ.
    """
    fs = match_spatial(fs, ft.shape[-2:])
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2)


class ATOptions(MapOptions):
    p: float = Field(2.0, gt=0, description="exponent of |F| in the attention map")


@register_loss("at")
class ATDistill(MapLoss):
    """Elementwise squared difference of the attention maps of the chosen stages (all by default),
    (B, H·W) per stage (`dim_reduce: mean` is the authors' code, with λ ≈ 1000). With PAD, an FC + BN
    `VarianceBranch` (PAD Sec. 5.1) reads the flattened student map the attention is computed from
    (resized to the teacher's size), or the attention vector (`branch_input: regressed`)."""

    Options = ATOptions
    options: ATOptions
    pad_compatible = True

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        self.pad = ctx.pad
        self.branches: list[int] = []
        if ctx.pad is not None:
            for (cs, _, _), (_, ht, wt) in self.stages(ctx):
                source = cs * ht * wt if ctx.pad.reads_backbone else ht * wt
                self.branches.append(ctx.pad.add_linear(source, ht * wt))

    def forward(self, student: Features, teacher: Features, mask: torch.Tensor | None = None) -> list[Term]:
        p = self.options.p
        terms = []
        for k, (fs, ft) in enumerate(zip(*self.select(student, teacher))):
            fs = match_spatial(fs, ft.shape[-2:])
            a_s = attention_map(fs, p)
            values = (a_s - attention_map(ft, p)).pow(2)
            m = self.stage_mask(mask, ft.shape[-2:], 1)
            logvar = None
            if self.pad is not None:
                logvar = self.pad.logvar(self.branches[k], fs.flatten(1) if self.pad.reads_backbone else a_s)
            terms.append(Term(values, m, logvar))
        return terms
