"""A fixed sample list read from an int64 .npy file (e.g. written by `facekd resample`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from facekd.bias.samplers.base import BaseSampler, SamplerOptions, SamplingData, register_sampler

__all__ = ["FileOptions", "FileSampler", "load_sample_list"]


def load_sample_list(path: str | Path, n: int | None = None) -> np.ndarray:
    """The 1-D integer array of dataset rows in `path` (.npy), as int64; with `n`, every row must
    lie in [0, n). One-line errors name the file and what was expected."""
    from facekd.utils import load_npy

    path = Path(path)
    arr = load_npy(path, "sample list")
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        what = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"{path}: expected a 1-D integer array of dataset indices, got {what}")
    if n is not None and arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{path}: indices must lie in [0, {n}), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


class FileOptions(SamplerOptions):
    path: Path


@register_sampler("file", FileOptions)
class FileSampler(BaseSampler):
    """The same list every epoch, read once from `path` (config: `sampler: {name: file, path: ...}`)."""

    options: FileOptions

    def __init__(self, options: FileOptions, data: SamplingData, seed: int):
        super().__init__(options, data, seed)
        self.samples = load_sample_list(options.path, data.n)
        self.sha256 = hashlib.sha256(self.samples.tobytes()).hexdigest()

    def indices(self, epoch: int) -> np.ndarray:
        return self.samples.copy()

    def resolved_options(self) -> dict:
        return {"path": str(self.options.path), "sha256": self.sha256, "num": int(self.samples.size)}
