"""A held-out validation split of any dataset, stratified by class.

`holdout_rows(labels, fraction, seed)` chooses the validation rows: each class gives
`fraction` of its images (the total is `round(fraction · N)`, shared out between classes by the
largest remainder, ties broken at random), and every class keeps at least one training image.
The choice depends only on (labels, fraction, seed), so every process and every rank agrees.
`Subset(dataset, rows, name)` is the dataset restricted to those rows (or to the others), still
following the contract of `facekd.data.base`: items are re-indexed 0..n-1, labels and
`num_classes` keep the parent's class ids, and the fingerprint is the parent's plus the rows.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import numpy as np
import torch

from facekd.data.augment import Augmentation


def holdout_rows(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 rows of a class-stratified validation split (see the module docstring)."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, 0x5EED])
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    want = fraction * counts
    take = np.minimum(np.floor(want).astype(np.int64), counts - 1)
    room = take < counts - 1
    extra = round(fraction * labels.size) - int(take.sum())
    if extra > 0:
        tie_break = rng.random(classes.size)
        order = np.lexsort((tie_break, -(want - np.floor(want))))
        order = order[room[order]][:extra]
        take[order] += 1
    rows = []
    for c in range(classes.size):
        members = np.flatnonzero(inverse == c)
        rows.append(rng.permutation(members)[: take[c]])
    return np.sort(np.concatenate(rows)).astype(np.int64) if rows else np.empty(0, np.int64)


class Subset(torch.utils.data.Dataset):
    """The rows `rows` (sorted int64) of `parent`, as a dataset of its own.

    `name` ("train" / "val") enters the fingerprint. Attributes of the parent that hold one value
    per row (`groups`) are restricted too; `parent`, `rows` are kept for reference.
    """

    def __init__(self, parent, rows: np.ndarray, name: str):
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= len(parent)):
            raise ValueError(f"Subset {name}: rows must be sorted, unique and in [0, {len(parent)})")
        self.parent, self.rows, self.name = parent, rows, name
        self.labels = np.asarray(parent.labels, dtype=np.int64)[rows]
        self.num_classes = int(parent.num_classes)
        self.image_size = parent.image_size
        groups = getattr(parent, "groups", None)
        self.groups = None if groups is None else np.asarray(groups)[rows]

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a {self.name} split of {len(self)} images")
        item = self.parent[int(self.rows[i])]
        served = int(item["index"])
        if served != self.rows[i]:  # the parent replaced an unreadable row by another one
            j = int(np.searchsorted(self.rows, served))
            if j >= len(self.rows) or self.rows[j] != served:
                raise ValueError(f"{self.name} split: row {i} is unreadable and its replacement lies outside the split")
            i = j
        return {**item, "index": torch.tensor(i, dtype=torch.int64)}

    @property
    def augmentation(self) -> dict[str, Any]:
        return self.parent.augmentation

    def with_augmentation(self, spec: Augmentation | dict[str, Any] | None) -> Subset:
        out = copy.copy(self)
        out.parent = self.parent.with_augmentation(spec)
        return out

    def without_augmentation(self) -> Subset:
        return self.with_augmentation(None)

    def fingerprint(self) -> str:
        """sha1 (16 hex) of the parent's fingerprint, the split name and the rows."""
        h = hashlib.sha1(f"{self.parent.fingerprint()}/{self.name}/".encode())
        h.update(self.rows.tobytes())
        return h.hexdigest()[:16]


def split_rows(labels: np.ndarray, split: str, fraction: float, seed: int) -> np.ndarray:
    """Rows of `split` ("train": all but the held-out rows, "val": the held-out rows)."""
    held = holdout_rows(labels, fraction, seed)
    if split == "val":
        return held
    keep = np.ones(len(labels), dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep).astype(np.int64)
