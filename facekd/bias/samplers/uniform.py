"""The baseline: every image once per epoch in a random order (what a shuffled DataLoader does)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from facekd.bias.samplers.base import BaseSampler, SamplerOptions, SamplingData, register_sampler

__all__ = ["UniformOptions", "UniformSampler", "check_num", "uniform_sampling"]


def check_num(num: int | None, n: int) -> int:
    """Draws per epoch: `num`, or n (one pass over the data) when None."""
    num = n if num is None else int(num)
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    return num


def uniform_sampling(n: int, num: int | None = None, seed: int = 0) -> np.ndarray:
    """A random permutation of the n rows drawn from `default_rng(seed)`; for num > n, permutations
    are concatenated and cut. Returns int64 (num,)."""
    if n <= 0:
        raise ValueError(f"uniform sampling: the dataset is empty (n={n})")
    num = check_num(num, n)
    rng = np.random.default_rng(seed)
    reps = -(-num // n) if num else 0
    return np.concatenate([rng.permutation(n) for _ in range(reps)] or [np.empty(0, np.int64)])[:num].astype(np.int64)


class UniformOptions(SamplerOptions):
    num: int | None = Field(None, ge=0, strict=True, description="draws per epoch; default: the dataset size")


@register_sampler("uniform", UniformOptions)
class UniformSampler(BaseSampler):
    """A fresh permutation of the rows each epoch (the default).

    Without `num`: the permutation of `default_rng([seed, epoch])`, the trainer's own shuffle.
    With `num`: `uniform_sampling(n, num, seed + epoch)`. The two seedings are kept as they were,
    so that runs made before sampling became configurable draw the same lists.
    """

    options: UniformOptions

    def __init__(self, options: UniformOptions, data: SamplingData, seed: int):
        data.require((), self.name)
        super().__init__(options, data, seed)

    def indices(self, epoch: int) -> np.ndarray:
        if self.options.num is None:
            return np.random.default_rng([self.seed, int(epoch)]).permutation(self.data.n).astype(np.int64)
        return uniform_sampling(self.data.n, self.options.num, self.seed + int(epoch))
