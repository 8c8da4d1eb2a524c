"""SynthFaces splits as datasets, `make_synthfaces` (render or reuse the cache), the on-disk cache."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, cast

import numpy as np

from facekd.data.arrays import ArrayDataset
from facekd.synthfaces.config import NUISANCES, SynthFacesConfig
from facekd.synthfaces.pairs import VerificationPairs, make_pairs
from facekd.synthfaces.render import allocate_groups, identity_params, identity_sizes, nuisance_params, render_faces
from facekd.utils import atomic_path


class SynthFacesDataset(ArrayDataset):
    """One SynthFaces split: `ArrayDataset` plus per-image nuisances and identities.

    Extra attributes: `nuisance` dict of float32 (N,) arrays — yaw (radians, signed), light
    (directional-light strength 0..1), expression (0..1), blur (Gaussian sigma in pixels at
    `image_size`), occlusion (fraction of the lower face covered, 0 = none); `hard` bool (N,);
    `identity_ids` int64 (N,) global identity ids (train and test ids never overlap).
    """

    def __init__(self, images, labels, groups, nuisance: dict, hard, identity_ids, config_fp: str, split: str):
        super().__init__(images, labels, groups, name=f"synthfaces/{split}")
        self.nuisance = {k: np.asarray(nuisance[k], np.float32) for k in NUISANCES}
        self.hard = np.asarray(hard, bool)
        self.identity_ids = np.asarray(identity_ids, np.int64)
        self.split = split
        self._config_fp = config_fp

    def fingerprint(self) -> str:
        """Config hash + split (the content is a function of these); independent of the augmentation."""
        return hashlib.sha1(f"{self._config_fp}/{self.split}".encode()).hexdigest()[:16]


@dataclasses.dataclass
class SynthFacesData:
    """`train` and `test` datasets, the verification `pairs` (rows of `test`), the `config`."""

    train: SynthFacesDataset
    test: SynthFacesDataset
    pairs: VerificationPairs
    config: SynthFacesConfig


def _make_split(cfg: SynthFacesConfig, split: str, sizes: np.ndarray, id_offset: int, stream: int) -> SynthFacesDataset:
    rng_id = np.random.default_rng([cfg.seed, stream, 0])
    rng_nu = np.random.default_rng([cfg.seed, stream, 1])
    groups_id = allocate_groups(sizes.size, cfg.group_proportions, rng_id)
    ident = identity_params(rng_id, groups_id)
    labels = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    nuis = nuisance_params(rng_nu, labels.size, cfg)
    chunk = 2048
    images = np.empty((labels.size, cfg.image_size, cfg.image_size, 3), np.uint8)
    for k, s in enumerate(range(0, labels.size, chunk)):
        rows = slice(s, s + chunk)
        lab = labels[rows]
        images[rows] = render_faces(
            {key: val[lab] for key, val in ident.items()},
            {key: val[rows] for key, val in nuis.items()},
            cfg.image_size,
            np.random.default_rng([cfg.seed, stream, 2, k]),
        )
    return SynthFacesDataset(
        images,
        labels,
        groups_id[labels],
        {k: nuis[k] for k in NUISANCES},
        nuis["hard"],
        labels + id_offset,
        cfg.fingerprint(),
        split,
    )


def make_synthfaces(cfg: SynthFacesConfig | None = None, cache_dir: str | os.PathLike | None = None) -> SynthFacesData:
    """Render SynthFaces for `cfg` (default config when None).

    With `cache_dir`, the arrays are stored in `cache_dir/synthfaces-<fingerprint>.npz` (written
    atomically) and reused on later calls with the same config.
    """
    cfg = cfg or SynthFacesConfig.preset("default")
    if cache_dir is not None:
        path = Path(cache_dir) / f"synthfaces-{cfg.fingerprint()}.npz"
        if path.exists():
            return _load_cache(path, cfg)
    sizes = identity_sizes(
        cfg.num_train_identities, cfg.min_images_per_identity, cfg.max_images_per_identity, cfg.size_exponent
    )
    sizes = np.random.default_rng([cfg.seed, 7]).permutation(sizes)
    train = _make_split(cfg, "train", sizes, 0, stream=1)
    test_sizes = np.full(cfg.num_test_identities, cfg.test_images_per_identity, np.int64)
    test = _make_split(cfg, "test", test_sizes, cfg.num_train_identities, stream=2)
    data = SynthFacesData(train, test, make_pairs(test, cfg), cfg)
    if cache_dir is not None:
        _save_cache(path, data)
    return data


def _save_cache(path: Path, data: SynthFacesData) -> None:
    arrays = {"config": np.array(data.config.model_dump_json())}
    for split in ("train", "test"):
        ds = getattr(data, split)
        arrays.update(
            {
                f"{split}/images": ds.images,
                f"{split}/labels": ds.labels,
                f"{split}/groups": ds.groups,
                f"{split}/hard": ds.hard,
                f"{split}/identity_ids": ds.identity_ids,
            }
        )
        arrays.update({f"{split}/nuisance/{k}": v for k, v in ds.nuisance.items()})
    arrays.update({f"pairs/{f.name}": getattr(data.pairs, f.name) for f in dataclasses.fields(VerificationPairs)})
    with atomic_path(path) as tmp:
        np.savez(tmp, **cast(dict[str, Any], arrays))


def _load_cache(path: Path, cfg: SynthFacesConfig) -> SynthFacesData:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable SynthFaces cache ({e}); delete it to re-render") from e
    if "config" not in arrays or SynthFacesConfig.model_validate_json(str(arrays["config"])) != cfg:
        raise ValueError(f"{path}: SynthFaces cache was made with a different config; delete it to re-render")
    splits = {}
    for split in ("train", "test"):

        def g(k: str, split: str = split) -> np.ndarray:
            return arrays[f"{split}/{k}"]

        splits[split] = SynthFacesDataset(
            g("images"),
            g("labels"),
            g("groups"),
            {k: g(f"nuisance/{k}") for k in NUISANCES},
            g("hard"),
            g("identity_ids"),
            cfg.fingerprint(),
            split,
        )
    pairs = VerificationPairs(**{f.name: arrays[f"pairs/{f.name}"] for f in dataclasses.fields(VerificationPairs)})
    return SynthFacesData(splits["train"], splits["test"], pairs, cfg)
