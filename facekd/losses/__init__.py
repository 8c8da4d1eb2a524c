"""Losses: classification (per-sample CE / Focal / CB / LDAM), distillation (one registered loss per
file in `distill`, one registered weighting per file in `weighting`, the `Distiller` that combines
them, PAD's variance branches in `variance`) and metric losses."""

from facekd.losses.gradient import scale_grad

__all__ = ["scale_grad"]
