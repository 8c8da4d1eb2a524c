"""PK sampling for metric learning: every batch holds P identities × K images each.

The epoch plan follows reid-strong-baseline's `RandomIdentitySampler`: each identity's images
are shuffled (identities with fewer than K images are drawn with replacement up to K) and cut
into chunks of K (a remainder shorter than K is dropped); batches then take one chunk from each of
P identities chosen at random among those with chunks left, until fewer than P remain.

Deterministic: the plan depends only on (seed, epoch); call `set_epoch` each epoch. Under DDP,
whole batches are dealt round-robin to ranks (batch b → rank b mod W), truncated to a multiple of
W, so each rank sees complete PK batches; use the DataLoader with batch_size = P·K and
drop_last=True. Registered as sampler "pk" (`facekd.bias.samplers.pk`), it also has the sampler
interface there: `indices(epoch)` (all batches of the epoch, every rank) and `describe()`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from facekd import dist


class PKSampler(Sampler[int]):
    """Sampler over dataset rows yielding P·K-sized PK batches back to back.

    labels: (N,) identity per row; p identities per batch, k images per identity.
    rank / world_size default to the torch.distributed process group (1 process otherwise).
    """

    def __init__(self, labels, p: int, k: int, seed: int = 0, rank: int | None = None, world_size: int | None = None):
        self.labels = np.asarray(labels).astype(np.int64)
        if self.labels.ndim != 1:
            raise ValueError(f"PKSampler: labels must be 1-D, got shape {self.labels.shape}")
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: p and k must be ≥ 1, got p={p}, k={k}")
        self.ids, inverse = np.unique(self.labels, return_inverse=True)
        if len(self.ids) < p:
            raise ValueError(f"PKSampler: {len(self.ids)} identities cannot fill P={p} per batch")
        order = np.argsort(inverse, kind="stable")
        self.rows = np.split(order, np.cumsum(np.bincount(inverse))[:-1])  # rows of each identity
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self._plan: tuple[int, list[np.ndarray]] | None = None  # (epoch, this rank's batches)
        self.rank = dist.rank() if rank is None else rank
        self.world = dist.world_size() if world_size is None else world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """All PK batches of `epoch` (default: the current one; every rank), each int64 (P·K,) rows."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch)])
        chunks = []
        for rows in self.rows:
            r = rng.choice(rows, size=self.k, replace=True) if len(rows) < self.k else rng.permutation(rows)
            chunks.append([r[i : i + self.k] for i in range(0, len(r) - self.k + 1, self.k)])
        out = []
        alive = [i for i, c in enumerate(chunks) if c]
        while len(alive) >= self.p:
            picked = rng.choice(len(alive), size=self.p, replace=False)
            out.append(np.concatenate([chunks[alive[j]].pop() for j in picked]))
            alive = [i for i in alive if chunks[i]]
        return out

    def indices(self, epoch: int) -> np.ndarray:
        """Every row of `epoch`'s batches, batch after batch (all ranks): int64 (batches·P·K,)."""
        b = self.batches(epoch)
        return np.concatenate(b) if b else np.empty(0, np.int64)

    def describe(self) -> dict:
        return {"name": "pk", "seed": int(self.seed), "options": {"p": int(self.p), "k": int(self.k)}}

    def __call__(self, epoch: int) -> np.ndarray:
        return self.indices(epoch)

    def _local(self) -> list[np.ndarray]:
        if self._plan is None or self._plan[0] != self.epoch:
            b = self.batches()
            self._plan = (self.epoch, b[: len(b) - len(b) % self.world][self.rank :: self.world])
        return self._plan[1]

    def __iter__(self) -> Iterator[int]:
        for batch in self._local():
            yield from batch.tolist()

    def __len__(self) -> int:
        return sum(len(b) for b in self._local())
