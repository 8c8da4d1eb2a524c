"""Data-bias rectification for distillation ("Rectifying the Data Bias in Knowledge Distillation").

angular KDE (Eq. 3, 8, 9), bandwidth rule (Eq. 5-7), uniformity (Eq. 4), and the Intrinsic (Eq. 10),
Extrinsic, identity-uniform and uniform samplers. See docs/bias.md.
"""

from facekd.bias.bandwidth import BandwidthResult, bandwidth_rule
from facekd.bias.kde import KDEResult, angular_kde, kde_exact, kde_knn, kernel, list_weights
from facekd.bias.samplers import (
    DEFAULT_IS_BANDWIDTH,
    METHODS,
    epoch_fn,
    extrinsic_sampling,
    identity_uniform_probabilities,
    identity_uniform_sampling,
    intrinsic_probabilities,
    intrinsic_sampling,
    uniform_sampling,
)
from facekd.bias.uniformity import UniformityResult, entropy_of_density, uniformity

__all__ = [
    "DEFAULT_IS_BANDWIDTH",
    "METHODS",
    "BandwidthResult",
    "KDEResult",
    "UniformityResult",
    "angular_kde",
    "bandwidth_rule",
    "entropy_of_density",
    "epoch_fn",
    "extrinsic_sampling",
    "identity_uniform_probabilities",
    "identity_uniform_sampling",
    "intrinsic_probabilities",
    "intrinsic_sampling",
    "kde_exact",
    "kde_knn",
    "kernel",
    "list_weights",
    "uniform_sampling",
    "uniformity",
]
