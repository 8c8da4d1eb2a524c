"""The SynthFaces verification protocol: genuine and impostor pairs of val or test rows (`make_pairs`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from facekd.synthfaces.config import SynthFacesConfig
    from facekd.synthfaces.dataset import SynthFacesDataset


@dataclasses.dataclass(frozen=True)
class VerificationPairs:
    """Pairs of rows of an evaluation dataset (val or test). All arrays have shape (P,).

    a, b: int64 row indices; issame: bool, True for genuine pairs; hard: bool, True when either
    image has a strong nuisance (`SynthFacesDataset.hard`)."""

    a: np.ndarray
    b: np.ndarray
    issame: np.ndarray
    hard: np.ndarray

    def __post_init__(self):
        n = len(self.a)
        for name in ("b", "issame", "hard"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"VerificationPairs: {name} has {len(getattr(self, name))} entries, a has {n}")

    def __len__(self) -> int:
        return len(self.a)

    @property
    def num_genuine(self) -> int:
        return int(self.issame.sum())

    @property
    def num_impostor(self) -> int:
        return int((~self.issame).sum())


def _choose(rng, pool_hard, pool_easy, n, hard_frac, what):
    """Pick n rows of candidate pairs: round(hard_frac·n) from the hard pool, the rest easy."""
    if hard_frac is None:
        pool = np.concatenate([pool_hard, pool_easy])
        if pool.shape[0] < n:
            raise ValueError(f"SynthFaces: only {pool.shape[0]} {what} pairs exist, {n} requested")
        return pool[rng.choice(pool.shape[0], n, replace=False)]
    nh = round(hard_frac * n)
    ne = n - nh
    if pool_hard.shape[0] < nh or pool_easy.shape[0] < ne:
        raise ValueError(
            f"SynthFaces: {what} pairs: need {nh} hard and {ne} easy, have {pool_hard.shape[0]} and "
            f"{pool_easy.shape[0]}; raise test identities / images per identity or lower the pair count"
        )
    return np.concatenate(
        [
            pool_hard[rng.choice(pool_hard.shape[0], nh, replace=False)],
            pool_easy[rng.choice(pool_easy.shape[0], ne, replace=False)],
        ]
    )


def make_pairs(ds: SynthFacesDataset, cfg: SynthFacesConfig, split: str = "test") -> VerificationPairs:
    """Verification protocol on the `split` ("test" or "val") dataset `ds`: its genuine and impostor
    pair counts (`cfg.eval_protocol(split)`) of same-identity and different-identity pairs, each
    without repeats (a < b), a fraction `hard_pair_fraction` of each kind involving at least one
    hard image; shuffled."""
    _, num_genuine, num_impostor = cfg.eval_protocol(split)
    rng = np.random.default_rng([cfg.seed, 99 if split == "test" else 98])
    labels, hard = ds.labels, ds.hard
    ia, ib = np.triu_indices(cfg.test_images_per_identity, 1)
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    gen = np.stack([(starts[:, None] + ia).ravel(), (starts[:, None] + ib).ravel()], 1)
    gh = hard[gen[:, 0]] | hard[gen[:, 1]]
    genuine = _choose(rng, gen[gh], gen[~gh], num_genuine, cfg.hard_pair_fraction, f"{split} genuine")
    # impostors: rejection-sample distinct (a < b) pairs of different identities until both
    # strata have enough candidates
    n = labels.size
    want = 3 * num_impostor
    codes = np.empty(0, np.int64)
    for _ in range(50):
        a, b = rng.integers(0, n, want), rng.integers(0, n, want)
        a, b = np.minimum(a, b), np.maximum(a, b)
        keep = labels[a] != labels[b]
        codes = np.unique(np.concatenate([codes, a[keep] * n + b[keep]]))
        imp = np.stack([codes // n, codes % n], 1)
        ih = hard[imp[:, 0]] | hard[imp[:, 1]]
        f = 0.0 if cfg.hard_pair_fraction is None else cfg.hard_pair_fraction
        if ih.sum() >= f * num_impostor and (~ih).sum() >= (1 - f) * num_impostor + 1 and codes.size >= num_impostor:
            break
    impostor = _choose(rng, imp[ih], imp[~ih], num_impostor, cfg.hard_pair_fraction, f"{split} impostor")
    pairs = np.concatenate([genuine, impostor])
    issame = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
    order = rng.permutation(len(pairs))
    pairs, issame = pairs[order], issame[order]
    return VerificationPairs(pairs[:, 0].copy(), pairs[:, 1].copy(), issame, hard[pairs[:, 0]] | hard[pairs[:, 1]])
