"""Distillation losses, one file each, registered by name in `LOSSES` (see `base` for the contract).

Adding a loss = adding one module here that decorates a `DistillLoss` subclass with
`@register_loss("name")`; the registry imports every module of this package at the first lookup.
The per-sample functions of the classic losses are re-exported for direct use.
"""

from facekd.losses.distill.at import at_elements, attention_map
from facekd.losses.distill.base import (
    LOSSES,
    DistillLoss,
    Features,
    LossContext,
    MapLoss,
    check_pair,
    match_spatial,
    register_loss,
)
from facekd.losses.distill.cc import cc_loss
from facekd.losses.distill.cosine import cosine_loss
from facekd.losses.distill.darkrank import darkrank_loss
from facekd.losses.distill.fitnet import FitNetHint
from facekd.losses.distill.hkd import hkd_loss
from facekd.losses.distill.l2 import l2_elements
from facekd.losses.distill.pkt import pkt_loss
from facekd.losses.distill.rkd import rkd_loss
from facekd.losses.distill.sp import sp_loss
from facekd.losses.distill.vid import VIDLoss

__all__ = [
    "LOSSES",
    "DistillLoss",
    "Features",
    "FitNetHint",
    "LossContext",
    "MapLoss",
    "VIDLoss",
    "at_elements",
    "attention_map",
    "cc_loss",
    "check_pair",
    "cosine_loss",
    "darkrank_loss",
    "hkd_loss",
    "l2_elements",
    "match_spatial",
    "pkt_loss",
    "register_loss",
    "rkd_loss",
    "sp_loss",
]
