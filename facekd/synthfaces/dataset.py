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
from facekd.synthfaces.identities import (
    allocate_groups,
    flip_partners,
    identity_params,
    identity_sizes,
    mix_identities,
    noisy_rows,
)
from facekd.synthfaces.pairs import VerificationPairs, make_pairs
from facekd.synthfaces.render import identity_info, nuisance_params, nuisance_severity, render_faces
from facekd.utils import atomic_path

SPLITS = ("train", "val", "test")
_STREAMS = {"train": 1, "test": 2, "val": 3}  # random streams of the splits (test keeps its old stream)
_IMAGE_INFO = ("severity", "identity_info", "noisy", "true_identity_ids")


class SynthFacesDataset(ArrayDataset):
    """One SynthFaces split: `ArrayDataset` plus per-image nuisances and identities.

    Extra attributes, one entry per image (N,):
    * `nuisance`: dict of float32 — yaw (radians, signed), light (directional-light strength
      0..1), expression (0..1), blur (Gaussian sigma in pixels at `image_size`), occlusion
      (fraction of the lower face covered, 0 = none);
    * `hard` bool: the image has a strong nuisance;
    * `severity` float32 in [0, 1]: how much the nuisances hide the identity (`nuisance_severity`);
    * `identity_info` float32 in [0, 1]: the share of the shown person's own face parameters in the
      image (1 − identity_loss · severity³; the rest comes from a random face of the same group);
    * `identity_ids` int64: global id of the *labelled* identity (train, val and test never overlap);
    * `noisy` bool: the label is wrong (train only); `true_identity_ids` int64: global id of the
      person actually shown, −1 for a person outside the dataset. Equal to `identity_ids` where
      `noisy` is False.
    """

    def __init__(
        self,
        images,
        labels,
        groups,
        nuisance: dict,
        hard,
        identity_ids,
        config_fp: str,
        split: str,
        *,
        severity=None,
        identity_info=None,
        noisy=None,
        true_identity_ids=None,
    ):
        super().__init__(images, labels, groups, name=f"synthfaces/{split}")
        n = len(self.labels)
        self.nuisance = {k: np.asarray(nuisance[k], np.float32) for k in NUISANCES}
        self.hard = np.asarray(hard, bool)
        self.identity_ids = np.asarray(identity_ids, np.int64)
        self.severity = np.zeros(n, np.float32) if severity is None else np.asarray(severity, np.float32)
        self.identity_info = np.ones(n, np.float32) if identity_info is None else np.asarray(identity_info, np.float32)
        self.noisy = np.zeros(n, bool) if noisy is None else np.asarray(noisy, bool)
        self.true_identity_ids = (
            self.identity_ids.copy() if true_identity_ids is None else np.asarray(true_identity_ids, np.int64)
        )
        self.split = split
        self._config_fp = config_fp

    def fingerprint(self) -> str:
        """Config hash + split (the content is a function of these); independent of the augmentation."""
        return hashlib.sha1(f"{self._config_fp}/{self.split}".encode()).hexdigest()[:16]


@dataclasses.dataclass
class SynthFacesData:
    """The `train`, `val` and `test` datasets (disjoint identities), the verification pairs of
    test (`pairs`) and of val (`val_pairs`), rows of their split, and the `config`."""

    train: SynthFacesDataset
    val: SynthFacesDataset
    test: SynthFacesDataset
    pairs: VerificationPairs
    val_pairs: VerificationPairs
    config: SynthFacesConfig

    def split(self, name: str) -> SynthFacesDataset:
        """The dataset of split `name` (train, val or test)."""
        if name not in SPLITS:
            raise ValueError(f"SynthFaces has splits {' / '.join(SPLITS)}, not {name!r}")
        return cast(SynthFacesDataset, getattr(self, name))

    def pairs_of(self, name: str) -> VerificationPairs:
        """The verification pairs of split `name` (val or test)."""
        if name not in ("val", "test"):
            raise ValueError(f"SynthFaces has verification pairs for val and test, not {name!r}")
        return self.pairs if name == "test" else self.val_pairs


def _shown_identities(cfg: SynthFacesConfig, split: str, ident: dict, groups_id, labels, id_offset: int, rng):
    """Per image: the face parameters of the person it shows, whether its label is wrong, and that
    person's global id. Train rows with label noise show another identity of the same group (a
    label flip) or, with probability `label_noise_outliers`, a stranger of that group (−1)."""
    noisy = noisy_rows(labels, cfg.label_noise, rng) if split == "train" else np.zeros(labels.size, bool)
    rows = np.flatnonzero(noisy)
    outlier = rng.random(rows.size) < cfg.label_noise_outliers
    source = labels.copy()
    source[rows[~outlier]] = flip_partners(labels[rows[~outlier]], groups_id, rng)
    shown = {k: v[source] for k, v in ident.items()}
    strangers = identity_params(rng, groups_id[labels[rows[outlier]]], cfg.group_feature_spread)
    for k in shown:
        shown[k][rows[outlier]] = strangers[k]
    true_ids = source + id_offset
    true_ids[rows[outlier]] = -1
    return shown, noisy, true_ids


def _render(cfg: SynthFacesConfig, faces: dict, nuis: dict, stream: int) -> np.ndarray:
    n = len(nuis["yaw"])
    images = np.empty((n, cfg.image_size, cfg.image_size, 3), np.uint8)
    chunk = 2048
    for k, s in enumerate(range(0, n, chunk)):
        rows = slice(s, s + chunk)
        images[rows] = render_faces(
            {key: val[rows] for key, val in faces.items()},
            {key: val[rows] for key, val in nuis.items()},
            cfg.image_size,
            np.random.default_rng([cfg.seed, stream, 2, k]),
        )
    return images


def _make_split(cfg: SynthFacesConfig, split: str, sizes: np.ndarray, id_offset: int) -> SynthFacesDataset:
    stream = _STREAMS[split]
    rng_id = np.random.default_rng([cfg.seed, stream, 0])
    rng_nu = np.random.default_rng([cfg.seed, stream, 1])
    rng_face = np.random.default_rng([cfg.seed, stream, 3])
    proportions = cfg.group_proportions if split == "train" else cfg.eval_group_proportions or cfg.group_proportions
    groups_id = allocate_groups(sizes.size, proportions, rng_id)
    ident = identity_params(rng_id, groups_id, cfg.group_feature_spread)
    labels = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    nuis = nuisance_params(rng_nu, labels.size, cfg)
    shown, noisy, true_ids = _shown_identities(cfg, split, ident, groups_id, labels, id_offset, rng_face)
    severity = nuisance_severity(nuis, cfg)
    info = identity_info(severity, cfg.identity_loss)
    random_faces = identity_params(rng_face, groups_id[labels], cfg.group_feature_spread)
    images = _render(cfg, mix_identities(shown, random_faces, info), nuis, stream)
    return SynthFacesDataset(
        images,
        labels,
        groups_id[labels],
        {k: nuis[k] for k in NUISANCES},
        nuis["hard"],
        labels + id_offset,
        cfg.fingerprint(),
        split,
        severity=severity,
        identity_info=info,
        noisy=noisy,
        true_identity_ids=true_ids,
    )


def make_synthfaces(cfg: SynthFacesConfig | None = None, cache_dir: str | os.PathLike | None = None) -> SynthFacesData:
    """Render SynthFaces for `cfg` (default config when None).

    Global identity ids: train 0..T−1, test T..T+S−1, val T+S..T+S+V−1. With `cache_dir`, the
    arrays are stored in `cache_dir/synthfaces-<fingerprint>.npz` (written atomically) and reused
    on later calls with the same config.
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
    train = _make_split(cfg, "train", sizes, 0)
    per_id = cfg.test_images_per_identity
    test = _make_split(cfg, "test", np.full(cfg.num_test_identities, per_id, np.int64), cfg.num_train_identities)
    num_val = cfg.eval_protocol("val")[0]
    val_offset = cfg.num_train_identities + cfg.num_test_identities
    val = _make_split(cfg, "val", np.full(num_val, per_id, np.int64), val_offset)
    data = SynthFacesData(train, val, test, make_pairs(test, cfg, "test"), make_pairs(val, cfg, "val"), cfg)
    if cache_dir is not None:
        _save_cache(path, data)
    return data


def _save_cache(path: Path, data: SynthFacesData) -> None:
    arrays = {"config": np.array(data.config.model_dump_json())}
    for split in SPLITS:
        ds = data.split(split)
        for key in ("images", "labels", "groups", "hard", "identity_ids", *_IMAGE_INFO):
            arrays[f"{split}/{key}"] = getattr(ds, key)
        arrays.update({f"{split}/nuisance/{k}": v for k, v in ds.nuisance.items()})
    for name, pairs in (("pairs", data.pairs), ("val_pairs", data.val_pairs)):
        arrays.update({f"{name}/{f.name}": getattr(pairs, f.name) for f in dataclasses.fields(VerificationPairs)})
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
    missing = [k for k in ("val/images", "val_pairs/a", "train/noisy") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: SynthFaces cache lacks {', '.join(missing)}; delete it to re-render")
    splits = {}
    for split in SPLITS:

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
            **{k: g(k) for k in _IMAGE_INFO},
        )
    pairs = {
        name: VerificationPairs(**{f.name: arrays[f"{name}/{f.name}"] for f in dataclasses.fields(VerificationPairs)})
        for name in ("pairs", "val_pairs")
    }
    return SynthFacesData(splits["train"], splits["val"], splits["test"], pairs["pairs"], pairs["val_pairs"], cfg)
