"""Per-sample weighting schemes: turn unreduced distillation losses into one scalar.

"Prime-Aware Adaptive Distillation" (Zhang et al., ECCV 2020, arXiv 2008.01458) writes a
distillation loss as Eq. 1, L = (1/N) Σ_i w_i d(x_i), and compares choices of w_i. Each weighting
is one file of this package, registered by name (`WEIGHTINGS`, `get_weighting`):

========================  =================================================================
name                      w_i (before normalising to sum 1)
========================  =================================================================
``uniform``               1
``warmup``                1, and λ ramps linearly from 0 over ``warmup_steps``
``soft_exp`` (Eq. 3)      exp(−d_i / T)              (T > 0, default 1)
``soft_poly`` (Eq. 4)     (1 + d_i)^(−α)             (α > 0, default 1)
``hard_mining``           exp(+d_i / T)              (the HAP2S-style exponential hard mining
                                                      PAD's Table 1 follows; T default 1)
``hard_discarding``       0 for the ⌊fraction·B⌋ largest d_i of the batch, else 1
                                                     (fraction default 0.1)
``pad`` (Eq. 7)           not a weight on d_i: mean_i Σ_d [(f_s − y)²_d / σ²_d + ln σ²_d],
                          σ² = exp(s) + 1e-6, s from the variance branch (1/σ² acts as the weight)
========================  =================================================================

Loss warm-up (λ ramping linearly from 0) is `warmup_factor`, applied by the Distiller to any
weighting.
"""

from facekd.losses.weighting.base import (
    DIM_REDUCTIONS,
    WEIGHTINGS,
    Term,
    Weighting,
    WeightingOptions,
    gap,
    get_weighting,
    reduce_dims,
    register_weighting,
    warmup_factor,
)
from facekd.losses.weighting.pad import PADWeighting, pad_log_variance, pad_nll

__all__ = [
    "DIM_REDUCTIONS",
    "WEIGHTINGS",
    "PADWeighting",
    "Term",
    "Weighting",
    "WeightingOptions",
    "gap",
    "get_weighting",
    "pad_log_variance",
    "pad_nll",
    "reduce_dims",
    "register_weighting",
    "warmup_factor",
]
