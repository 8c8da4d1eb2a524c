"""The sample lists a training run draws, saved per epoch: `run_dir/samples/epoch_000.npy`, ….

Each file is the int64 list of dataset rows of one epoch, in the order they were drawn (all
ranks' rows, before they are shared out over processes under torchrun), written atomically by
rank 0 when the epoch starts. They are what the data-bias paper's uniformity is scored on
(`facekd uniformity CACHE --list run_dir/samples/epoch_000.npy`) without drawing them again, and
what `sampler: {name: file, path: ...}` replays.

`RecordedSampler(sampler, directory)` wraps the torch Sampler the trainer iterates and yields the
same rows in the same order; the trainer calls its `set_epoch` before each epoch as it would the
wrapped one's. A sampler that knows its whole epoch (`epoch_indices()`, as
`facekd.data.sampler.IndexListSampler`) is saved whole; any other (the P×K sampler) is saved as
the rows rank 0 iterates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from pathlib import Path
from typing import cast

import numpy as np
from torch.utils.data import Sampler

from facekd import dist
from facekd.utils import save_npy

SAMPLES_DIR = "samples"


def epoch_file(directory: Path, epoch: int) -> Path:
    """`directory/epoch_{epoch:03d}.npy`."""
    return Path(directory) / f"epoch_{epoch:03d}.npy"


class RecordedSampler(Sampler[int]):
    """`sampler`'s rows, with each epoch's list saved to `directory/epoch_XXX.npy` (rank 0)."""

    def __init__(self, sampler: Sampler, directory: str | Path):
        self.sampler = sampler
        self.directory = Path(directory)
        self.epoch = 0

    def set_epoch(self, epoch: int, *args, **kwargs) -> None:
        self.epoch = int(epoch)
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch, *args, **kwargs)

    def __iter__(self) -> Iterator[int]:
        whole = getattr(self.sampler, "epoch_indices", None)
        if whole is not None:
            self._save(np.asarray(whole(), dtype=np.int64))
            return iter(self.sampler)
        rows = np.fromiter(iter(self.sampler), dtype=np.int64)
        self._save(rows)
        return iter(rows.tolist())

    def __len__(self) -> int:
        return len(cast(Sized, self.sampler))

    def _save(self, rows: np.ndarray) -> None:
        if dist.is_main():
            save_npy(epoch_file(self.directory, self.epoch), rows)


def recorded(sampler, dataset, seed: int, run_dir: str | Path) -> RecordedSampler:
    """What `train()` accepts as its sampler (None, an index array, epoch → indices, a Sampler),
    made a Sampler as `train()` would (`facekd.train.make_sampler`) and recorded into
    `run_dir/samples/`."""
    from facekd.train import make_sampler

    return RecordedSampler(make_sampler(dataset, sampler, seed), Path(run_dir) / SAMPLES_DIR)


__all__ = ["SAMPLES_DIR", "RecordedSampler", "epoch_file", "recorded"]
