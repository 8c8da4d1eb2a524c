"""Data-bias rectification for distillation ("Rectifying the Data Bias in Knowledge Distillation").

angular KDE (Eq. 3, 8, 9), bandwidth rule (Eq. 5-7), uniformity (Eq. 4), and the samplers
(`facekd.bias.samplers`: Intrinsic (Eq. 10), Extrinsic, identity-uniform, uniform, file, PK),
built from a config by `facekd.bias.sampling.build_sampler`. See docs/bias.md.
"""

from facekd.bias.bandwidth import BandwidthResult, bandwidth_rule
from facekd.bias.kde import DensityOptions, KDEResult, angular_kde, kde_exact, kde_knn, kernel, list_weights
from facekd.bias.samplers import (
    DEFAULT_IS_BANDWIDTH,
    METHODS,
    SAMPLERS,
    EpochSampler,
    epoch_fn,
    extrinsic_sampling,
    identity_uniform_probabilities,
    identity_uniform_sampling,
    intrinsic_probabilities,
    intrinsic_sampling,
    register_sampler,
    uniform_sampling,
)
from facekd.bias.sampling import SamplerConfig, build_sampler
from facekd.bias.uniformity import UniformityResult, entropy_of_density, uniformity

__all__ = [
    "DEFAULT_IS_BANDWIDTH",
    "METHODS",
    "SAMPLERS",
    "BandwidthResult",
    "DensityOptions",
    "EpochSampler",
    "KDEResult",
    "SamplerConfig",
    "UniformityResult",
    "angular_kde",
    "bandwidth_rule",
    "build_sampler",
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
    "register_sampler",
    "uniform_sampling",
    "uniformity",
]
