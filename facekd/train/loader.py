"""What feeds the loop: the sample order of each epoch, its batches after a resume point, and
one DataLoader for the whole run (workers, pinned memory, prefetching on CUDA).

Order contract: each epoch's sample order comes from a sampler seeded by (seed, epoch); the
batches already consumed in the current epoch are skipped as *indices* (no image is loaded for
them); the DataLoader draws its worker seeds from its own generator, re-seeded by (seed, epoch)
before each epoch, so iterating never touches the global RNG.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import cast

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

# Row indices stay on the host: teacher caches are looked up there, and copying them back from
# the device would cost a synchronisation every step.
HOST_KEYS = frozenset({"index"})


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def make_sampler(dataset, sampler, seed: int) -> Sampler:
    """The sampler train() uses: None → a uniform shuffle regenerated each epoch (seeded by
    (seed, epoch)); an int64 array / callable epoch → indices → IndexListSampler; a Sampler as is."""
    from facekd.data.sampler import IndexListSampler

    if isinstance(sampler, Sampler):
        return sampler
    if sampler is None:
        return IndexListSampler.shuffled(len(dataset), seed=seed)
    if callable(sampler):
        return IndexListSampler(sampler, seed=seed, regenerate_each_epoch=True)
    return IndexListSampler(np.asarray(sampler, dtype=np.int64), seed=seed)


class EpochBatches(Sampler[list[int]]):
    """The micro-batches of the current epoch, after skipping the first `skip`, at most `limit`.

    `start(epoch, skip)` moves to an epoch (the sampler's `set_epoch`) before each pass; one
    instance serves the whole run, so that a DataLoader with persistent workers can keep it.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, limit: int):
        self.sampler, self.batch_size, self.drop_last, self.limit = sampler, batch_size, drop_last, limit
        self.skip = 0

    def start(self, epoch: int, skip: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(BatchSampler(self.sampler, self.batch_size, self.drop_last)):
            if i >= self.limit:
                return
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, self.limit - self.skip)


def samples_per_epoch(sampler: Sampler) -> int:
    return len(cast(Sized, sampler))


def worker_count(setting: int | str, device: torch.device) -> int:
    """DataLoader workers: an int as given; "auto" → min(8, this process' share of the cores) on
    CUDA (at least 1), 0 on CPU, where the exact-resume contract needs the main process to draw
    the augmentation and where the cores are the ones training."""
    if isinstance(setting, int):
        return setting
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_process))


def build_loader(dataset, batches: EpochBatches, workers: int, device: torch.device) -> DataLoader:
    """One DataLoader for the run: with workers they persist across epochs and each keeps 4
    batches in flight; on CUDA batches come in pinned memory (copied with non_blocking)."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def epoch_iter(loader: DataLoader, batches: EpochBatches, seed: int, epoch: int, skip: int):
    """The batches of `epoch` after the first `skip` (worker seeds drawn from (seed, epoch))."""
    batches.start(epoch, skip)
    cast(torch.Generator, loader.generator).manual_seed(epoch_seed(seed, epoch))
    return iter(loader)


def to_device(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """The batch's tensors on `device` (non_blocking; `HOST_KEYS` stay), 4-D images channels_last
    when asked."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and k not in HOST_KEYS:
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


__all__ = [
    "EpochBatches",
    "build_loader",
    "epoch_iter",
    "epoch_seed",
    "make_sampler",
    "samples_per_epoch",
    "to_device",
    "worker_count",
]
