"""Uniform sampling on identities (USI, Tables 1 and 5 of "Rectifying the Data Bias"): a random
identity, then a random image of it."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from facekd.bias.samplers.base import BaseSampler, SamplerOptions, SamplingData, register_sampler
from facekd.bias.samplers.uniform import check_num

__all__ = ["USIOptions", "USISampler", "identity_uniform_probabilities", "identity_uniform_sampling"]


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    return labels


def identity_uniform_probabilities(labels) -> np.ndarray:
    """USI probabilities p_i = 1 / (C · n_{y_i}) over the C identities present. float64 (N,)."""
    labels = _check_labels(labels)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (counts.size * counts[inv].astype(np.float64))


def identity_uniform_sampling(labels, num: int | None = None, seed: int = 0) -> np.ndarray:
    """USI: `num` (default N) draws, each a uniformly random identity then a uniformly random image
    of it. labels: (N,) int. Returns int64 (num,)."""
    labels = _check_labels(labels)
    num = check_num(num, labels.size)
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, counts.size, size=num)
    offset = np.floor(rng.random(num) * counts[cls]).astype(np.int64)
    return order[starts[cls] + np.minimum(offset, counts[cls] - 1)].astype(np.int64)


class USIOptions(SamplerOptions):
    num: int | None = Field(None, ge=0, strict=True, description="draws per epoch; default: the dataset size")


@register_sampler("usi", USIOptions, needs=("labels",))
class USISampler(BaseSampler):
    """Identity-uniform draws: `identity_uniform_sampling(labels, num, seed + epoch)`."""

    options: USIOptions

    def __init__(self, options: USIOptions, data: SamplingData, seed: int):
        data.require(("labels",), self.name)
        super().__init__(options, data, seed)

    def indices(self, epoch: int) -> np.ndarray:
        return identity_uniform_sampling(self.data.labels, self.options.num, self.seed + int(epoch))
