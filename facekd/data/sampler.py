"""`IndexListSampler`: feed a given list of dataset indices (one epoch of draws) to a DataLoader.

Every sampling strategy in facekd (uniform shuffle, identity-uniform, Intrinsic / Extrinsic
Sampling) produces an int64 index array; this one class turns it into a torch Sampler, shards it
across DDP ranks like `torch.utils.data.DistributedSampler`, and optionally regenerates it each
epoch. The trainer never knows which strategy made the list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from facekd import dist

IndexSource = Sequence[int] | np.ndarray | torch.Tensor | Callable[[int], np.ndarray]


class IndexListSampler(torch.utils.data.Sampler[int]):
    """Yield a given index list, this rank's shard of it, deterministically per (seed, epoch).

    Args:
        indices_or_fn: an int64 index array (the whole epoch, all ranks), or a callable
            `fn(epoch) -> indices`. A callable is evaluated once (at epoch 0) unless
            `regenerate_each_epoch`, in which case it is called for every epoch.
        seed: seeds the optional per-epoch shuffle (`shuffle=True`): the permutation for epoch e
            is `np.random.default_rng([seed, e])`, so a resumed run sees the same order.
        regenerate_each_epoch: call `fn(epoch)` at every `set_epoch` (only for a callable).
        shuffle: permute the list each epoch (default False: the list's own order is used, as a
            sampler's draw list already is random).
        dataset_size: if given, every index must lie in `[0, dataset_size)`.
        drop_last: drop the tail so every rank gets `len // world` items (default False: pad by
            repeating the list from its start, as DistributedSampler does).
        rank, world_size: default to `facekd.dist` at iteration time (1 process: 0 and 1).

    Sharding: the (padded) epoch list `L` is split as `L[rank::world_size]`.
    Call `set_epoch(epoch)` before each epoch; `set_epoch(epoch, start=k)` resumes mid-epoch by
    skipping the first `k` items of this rank's shard.
    """

    def __init__(
        self,
        indices_or_fn: IndexSource,
        seed: int = 0,
        regenerate_each_epoch: bool = False,
        *,
        shuffle: bool = False,
        dataset_size: int | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if regenerate_each_epoch and not callable(indices_or_fn):
            raise ValueError("regenerate_each_epoch=True needs a callable fn(epoch) -> indices, got a fixed list")
        self._source = indices_or_fn
        self.seed = int(seed)
        self.regenerate_each_epoch = bool(regenerate_each_epoch)
        self.shuffle = bool(shuffle)
        self.dataset_size = dataset_size
        self.drop_last = bool(drop_last)
        self._rank, self._world = rank, world_size
        self.epoch = 0
        self.start = 0
        self._cache: tuple[int, np.ndarray] | None = None
        if not callable(indices_or_fn):
            self._cache = (0, self._validate(indices_or_fn, "index list"))

    @classmethod
    def shuffled(cls, n: int, seed: int = 0, **kw) -> IndexListSampler:
        """Uniform sampling without replacement: a fresh permutation of `range(n)` each epoch."""
        if n <= 0:
            raise ValueError(f"shuffled sampler needs n > 0, got {n}")
        return cls(np.arange(n, dtype=np.int64), seed=seed, shuffle=True, dataset_size=n, **kw)

    def _validate(self, idx, what: str) -> np.ndarray:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        arr = np.asarray(idx)
        if arr.ndim != 1:
            raise ValueError(f"IndexListSampler: {what} must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"IndexListSampler: {what} is empty")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"IndexListSampler: {what} must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        hi = self.dataset_size
        bad = (arr < 0) | (arr >= hi) if hi is not None else arr < 0
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            bound = f"[0, {hi})" if hi is not None else ">= 0"
            raise ValueError(f"IndexListSampler: {what}[{pos}] = {arr[pos]} is out of range, expected {bound}")
        return arr

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch (and, to resume mid-epoch, the first position of this rank's shard)."""
        if epoch < 0 or start < 0:
            raise ValueError(f"set_epoch: epoch and start must be >= 0, got {epoch}, {start}")
        self.epoch, self.start = int(epoch), int(start)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The whole epoch's list (all ranks, before padding/sharding), int64 `(M,)`."""
        epoch = self.epoch if epoch is None else int(epoch)
        cache = self._cache
        if callable(self._source):
            key = epoch if self.regenerate_each_epoch else 0
            if cache is None or cache[0] != key:
                cache = self._cache = (key, self._validate(self._source(key), f"fn({key})"))
        if cache is None:
            raise RuntimeError("IndexListSampler: no index list")  # unreachable: a fixed list is cached at init
        idx = cache[1]
        if self.shuffle:
            idx = idx[np.random.default_rng([self.seed, epoch]).permutation(idx.size)]
        return idx

    def _world_rank(self) -> tuple[int, int]:
        w = dist.world_size() if self._world is None else self._world
        r = dist.rank() if self._rank is None else self._rank
        if not 0 <= r < w:
            raise ValueError(f"IndexListSampler: rank {r} is not in [0, {w})")
        return w, r

    def shard(self, epoch: int | None = None) -> np.ndarray:
        """This rank's items for the epoch (after padding or dropping), int64, before `start`."""
        w, r = self._world_rank()
        idx = self.epoch_indices(epoch)
        if self.drop_last:
            total = (idx.size // w) * w
            if total == 0:
                raise ValueError(f"IndexListSampler: {idx.size} indices cannot be split over {w} ranks with drop_last")
            idx = idx[:total]
        else:
            total = -(-idx.size // w) * w
            if total > idx.size:
                idx = np.concatenate([idx, np.resize(idx, total - idx.size)])
        return idx[r::w]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start :].tolist())

    def __len__(self) -> int:
        return max(0, self.shard().size - self.start)
