"""Cells that follow the identities: the partition behind the approximate searches at scale.

Face and re-ID training sets come with identity labels, and an identity's embeddings lie
together (ArcFace trains them to); so a cell per identity needs no clustering, and every row
belongs to the cell of its own identity. Identities larger than `cell_max` rows (a few huge
classes, or classification data) are split by k-means into ⌈size / cell_max⌉ cells, so no cell
is expensive to scan. Used by Extrinsic Sampling's "ivf" search (`facekd.bias.nearest`) and by
the identity-cell density (`facekd.bias.kde`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Cells", "identity_cells"]


@dataclass(frozen=True)
class Cells:
    """cell: int64 (N,) cell of each row; rows: int64 (N,) row ids grouped by cell (ascending
    within a cell); starts: int64 (C+1,) so cell c holds rows[starts[c]:starts[c+1]]; means:
    float32 (C, d) unnormalised mean embedding of each cell."""

    cell: np.ndarray
    rows: np.ndarray
    starts: np.ndarray
    means: np.ndarray

    @property
    def count(self) -> int:
        return self.starts.size - 1

    def members(self, c: int) -> np.ndarray:
        return self.rows[self.starts[c] : self.starts[c + 1]]


def identity_cells(x: np.ndarray, labels: np.ndarray, cell_max: int = 256, seed: int = 0) -> Cells:
    """The cells of unit rows x (N, d) float32 with identity `labels` (N,) (module docstring)."""
    import faiss

    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels: expected shape ({x.shape[0]},) (one per embedding), got {labels.shape}")
    _, cell = np.unique(labels, return_inverse=True)
    cell = cell.astype(np.int64).ravel()
    counts = np.bincount(cell)
    next_id = counts.size
    for c in np.flatnonzero(counts > cell_max):
        rows = np.flatnonzero(cell == c)
        k = -(-rows.size // cell_max)
        km = faiss.Kmeans(x.shape[1], k, niter=10, seed=seed, verbose=False)
        km.train(x[rows])
        _, part = km.index.search(x[rows], 1)
        cell[rows] = np.where(part[:, 0] == 0, c, next_id + part[:, 0] - 1)
        next_id += k - 1
    cell = np.unique(cell, return_inverse=True)[1].astype(np.int64).ravel()
    rows = np.argsort(cell, kind="stable")
    starts = np.searchsorted(cell[rows], np.arange(cell.max() + 2))
    means = np.add.reduceat(x[rows], starts[:-1], axis=0) / np.diff(starts)[:, None]
    return Cells(cell, rows, starts, means.astype(np.float32))
