"""Samplers: which dataset rows an epoch trains on, one registered kind per module.

    uniform    a fresh permutation each epoch (the baseline)            uniform.py
    file       a fixed list from an int64 .npy                          file.py
    usi        uniform on identities (Tables 1, 5)                      usi.py
    intrinsic  Intrinsic Sampling, p ∝ 1/f̂_h (Eq. 10)                   intrinsic.py
    extrinsic  Extrinsic Sampling, nearest row to random directions     extrinsic.py
    pk         P identities × K images per batch (metric learning)      pk.py

`base.py` has the contract and the registry; `facekd.bias.sampling` builds a sampler from a config.
A new sampler is one new module here that calls `register_sampler`, imported below.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facekd.bias.samplers import extrinsic, file, intrinsic, pk, uniform, usi  # noqa: F401  (registration)
from facekd.bias.samplers.base import (
    SAMPLERS,
    BaseSampler,
    EpochSampler,
    SamplerKind,
    SamplerOptions,
    SamplingData,
    register_sampler,
    sampler_kind,
    validate_options,
)
from facekd.bias.samplers.extrinsic import extrinsic_sampling
from facekd.bias.samplers.intrinsic import DEFAULT_IS_BANDWIDTH, intrinsic_probabilities, intrinsic_sampling
from facekd.bias.samplers.uniform import uniform_sampling
from facekd.bias.samplers.usi import identity_uniform_probabilities, identity_uniform_sampling

__all__ = [
    "DEFAULT_IS_BANDWIDTH",
    "METHODS",
    "SAMPLERS",
    "BaseSampler",
    "EpochSampler",
    "SamplerKind",
    "SamplerOptions",
    "SamplingData",
    "epoch_fn",
    "extrinsic_sampling",
    "identity_uniform_probabilities",
    "identity_uniform_sampling",
    "intrinsic_probabilities",
    "intrinsic_sampling",
    "register_sampler",
    "sampler_kind",
    "uniform_sampling",
    "validate_options",
]

METHODS = ("intrinsic", "extrinsic", "usi", "uniform")


def epoch_fn(
    method: str,
    *,
    embeddings=None,
    labels=None,
    n: int | None = None,
    num: int | None = None,
    seed: int = 0,
    bandwidth: float = DEFAULT_IS_BANDWIDTH,
    kde_method: str = "auto",
    progress: bool = False,
    **kde_options,
) -> Callable[[int], np.ndarray]:
    """The registered sampler `method` as a plain function `epoch -> int64 sample list`, for code
    that holds arrays rather than a config: bandwidth in radians (intrinsic), `kde_method` and
    `kde_options` (intrinsic only, ignored otherwise: `facekd.bias.kde.DensityOptions` fields).
    The density / search index is computed once, on the first call."""
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}: expected one of {METHODS}")
    options: dict = {"num": num}
    if method == "intrinsic":
        options.update(bandwidth=f"{float(bandwidth)!r}rad", density={"method": kde_method, **kde_options})
    if n is None:
        src = labels if labels is not None else embeddings
        if src is None:
            raise ValueError(f"{method} sampling needs n, labels or embeddings to count the rows")
        n = len(src)
    data = SamplingData(
        n=int(n),
        labels=None if labels is None else np.asarray(labels),
        embeddings=None if embeddings is None else np.asarray(embeddings),
        progress=progress,
    )
    sampler = sampler_kind(method).build(validate_options(method, options), data, seed)
    return lambda epoch: sampler.indices(epoch)
