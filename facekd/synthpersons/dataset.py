"""SynthPersons splits as re-ID datasets, laid out as Market-1501 is, and `make_synthpersons`.

Layout (Market-1501's protocol): train and test people are disjoint, with person ids drawn from
1..1501. Each person walks past 2..6 of the cameras (`min_cameras`..`max_cameras`); each walk is a
tracklet of 1..`max_images_per_camera` frames. A test person's walk gives one query image
(box 00, as Market's hand-drawn query boxes) and its frames to the gallery. The gallery also holds
false detections (pid 0000, the camera's scene only: `distractor_fraction`) and bad boxes of test
people (pid -1, the person half out of the crop: `junk_fraction`); readers drop pid -1.

File names are Market-1501's: `0002_c1s1_000451_01.jpg` = person 0002, camera 1, sequence 1, frame
451, box 01. Rows of every split are sorted by file name, so the in-memory datasets list images in
the order `facekd.data.reid.ReIDDataset` reads the exported files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from facekd.data.augment import Augmentation
from facekd.data.base import Augmentable, to_tensor_image
from facekd.data.reid import IMAGENET_MEAN, IMAGENET_STD
from facekd.synthpersons.config import MAX_PID, SynthPersonsConfig
from facekd.synthpersons.render import camera_params, image_params, person_params, render_persons
from facekd.utils import atomic_path

SPLITS = ("train", "query", "gallery")


class SynthPersonsDataset(Augmentable, torch.utils.data.Dataset):
    """One SynthPersons split in memory, with the item contract of `ReIDDataset`.

    images uint8 (N, H, W, 3); pids int64 (N,) person ids (0 = distractor); camids int64 (N,)
    0-based; names: the Market-1501 file names. `labels` are pids relabelled to 0..C-1 (sorted)
    for train and the pids otherwise; `normalize` "imagenet" (default) or "face" as `ReIDDataset`.
    Items: {"image": float32 (3, H, W), "label", "index", "camid"}.
    """

    def __init__(
        self, images, pids, camids, names, split: str, config_fp: str, normalize: str = "imagenet", augment=None
    ):
        if normalize not in ("imagenet", "face"):
            raise ValueError(f"normalize must be 'imagenet' or 'face', got {normalize!r}")
        self.images = np.asarray(images, np.uint8)
        self.pids, self.camids = np.asarray(pids, np.int64), np.asarray(camids, np.int64)
        self.names = list(names)
        self.split, self.normalize, self._config_fp = split, normalize, config_fp
        if split == "train":
            uniq, inv = np.unique(self.pids, return_inverse=True)
            self.labels, self.num_classes = inv.astype(np.int64), int(uniq.size)
        else:
            self.labels, self.num_classes = self.pids.copy(), int(self.pids.max()) + 1 if len(self.pids) else 0
        self.image_size = (int(self.images.shape[1]), int(self.images.shape[2]))
        self._augment = Augmentation.parse(augment)

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"synthpersons/{self.split}: index {i} out of range for {len(self)} images")
        x = to_tensor_image(self.images[i])
        if self.normalize == "imagenet":
            x = (x.add(1.0).div_(2.0) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
                :, None, None
            ]
        return {
            "image": self._augment.apply(x),
            "label": torch.tensor(int(self.labels[i]), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
            "camid": torch.tensor(int(self.camids[i]), dtype=torch.int64),
        }

    def fingerprint(self) -> str:
        """Config hash, split and normalisation (the content is a function of these)."""
        return hashlib.sha1(f"{self._config_fp}/{self.split}/{self.normalize}".encode()).hexdigest()[:16]


@dataclasses.dataclass
class SynthPersonsData:
    """`train`, `query`, `gallery` (SynthPersonsDataset) and the gallery's pid -1 boxes
    (`junk_images` uint8 (J, H, W, 3), `junk_names`), which readers drop but a release holds."""

    train: SynthPersonsDataset
    query: SynthPersonsDataset
    gallery: SynthPersonsDataset
    junk_images: np.ndarray
    junk_names: list[str]
    config: SynthPersonsConfig

    def split(self, name: str) -> SynthPersonsDataset:
        if name not in SPLITS:
            raise ValueError(f"SynthPersons has splits {' / '.join(SPLITS)}, not {name!r}")
        return getattr(self, name)


def _walks(cfg: SynthPersonsConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One row per image of a person: pid, person index, camera (0-based), tracklet, role
    (0 train, 1 query, 2 gallery)."""
    pids = rng.permutation(np.arange(1, MAX_PID + 1))
    train_pids = np.sort(pids[: cfg.num_train_identities])
    test_pids = np.sort(pids[cfg.num_train_identities : cfg.num_train_identities + cfg.num_test_identities])
    rows: list[tuple[int, int, int, int, int]] = []
    trk = 0
    for person, pid in enumerate(np.concatenate([train_pids, test_pids])):
        test = person >= cfg.num_train_identities
        k = int(rng.integers(cfg.min_cameras, min(cfg.max_cameras, cfg.num_cameras) + 1))
        for cam in np.sort(rng.choice(cfg.num_cameras, k, replace=False)):
            frames = int(rng.integers(1, cfg.max_images_per_camera + 1))
            roles = [1] + [2] * frames if test else [0] * frames
            rows += [(int(pid), person, int(cam), trk, r) for r in roles]
            trk += 1
    a = np.array(rows, np.int64).reshape(-1, 5)
    return dict(pid=a[:, 0], person=a[:, 1], cam=a[:, 2], tracklet=a[:, 3], role=a[:, 4])


def _add_false_boxes(cfg: SynthPersonsConfig, walks: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Append gallery distractors (pid 0, no person) and junk boxes (pid -1, a test person badly
    cropped), each its own tracklet; their counts are the configured shares of the whole gallery."""
    n_person = int((walks["role"] == 2).sum())
    total = n_person / max(1e-9, 1.0 - cfg.distractor_fraction - cfg.junk_fraction)
    n_d, n_j = round(cfg.distractor_fraction * total), round(cfg.junk_fraction * total)
    first_test = cfg.num_train_identities
    n_people = cfg.num_train_identities + cfg.num_test_identities
    trk0 = int(walks["tracklet"].max()) + 1
    extra = dict(
        pid=np.r_[np.zeros(n_d, np.int64), -np.ones(n_j, np.int64)],
        person=np.r_[-np.ones(n_d, np.int64), rng.integers(first_test, n_people, n_j)],
        cam=rng.integers(0, cfg.num_cameras, n_d + n_j),
        tracklet=trk0 + np.arange(n_d + n_j),
        role=np.full(n_d + n_j, 2, np.int64),
    )
    return {k: np.concatenate([walks[k], extra[k]]) for k in walks}


def _names(walks: dict, rng: np.random.Generator) -> list[str]:
    """Market-1501 file names: frames advance per camera (unique per camera), sequence 1..6 by
    frame range, box 00 for queries, 01 for people, 02 for junk, 03 for distractors."""
    n = walks["pid"].size
    frame = np.zeros(n, np.int64)
    for cam in np.unique(walks["cam"]):
        rows = np.flatnonzero(walks["cam"] == cam)
        frame[rows] = np.cumsum(rng.integers(5, 40, rows.size))
    seq = 1 + np.minimum(frame // 20_000, 5)
    box = np.where(walks["role"] == 1, 0, np.where(walks["pid"] > 0, 1, np.where(walks["pid"] == -1, 2, 3)))
    return [
        f"{'-1' if p == -1 else f'{p:04d}'}_c{c + 1}s{s}_{f % 1_000_000:06d}_{b:02d}.jpg"
        for p, c, s, f, b in zip(walks["pid"], walks["cam"], seq, frame, box)
    ]


def _render_all(cfg: SynthPersonsConfig, walks: dict) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 1])
    people = person_params(rng, cfg.num_train_identities + cfg.num_test_identities)
    cams = camera_params(rng, cfg.num_cameras)
    views = image_params(rng, walks["cam"], walks["tracklet"], cams, cfg.view_noise_deg, cfg.occlusion_rate)
    junk = np.flatnonzero(walks["pid"] == -1)
    views["dx"][junk] = rng.choice([-1.0, 1.0], junk.size) * rng.uniform(0.1, 0.17, junk.size)
    views["scale"][junk] = rng.uniform(1.25, 1.6, junk.size)
    who = np.maximum(walks["person"], 0)
    images = np.empty((who.size, cfg.height, cfg.width, 3), np.uint8)
    chunk = 64  # small batches stay in cache: several times faster than one large batch
    for k, s in enumerate(range(0, who.size, chunk)):
        rows = slice(s, s + chunk)
        images[rows] = render_persons(
            {key: v[who[rows]] for key, v in people.items()},
            {key: v[rows] for key, v in views.items()},
            cams,
            cfg.height,
            np.random.default_rng([cfg.seed, 2, k]),
            visible=walks["person"][rows] >= 0,
        )
    return images


def make_synthpersons(
    cfg: SynthPersonsConfig | None = None, cache_dir: str | os.PathLike | None = None, normalize: str = "imagenet"
) -> SynthPersonsData:
    """Render SynthPersons for `cfg` (default preset when None). With `cache_dir`, the arrays are
    stored in `cache_dir/synthpersons-<fingerprint>.npz` (written atomically) and reused."""
    cfg = cfg or SynthPersonsConfig.preset("default")
    path = None if cache_dir is None else Path(cache_dir) / f"synthpersons-{cfg.fingerprint()}.npz"
    if path is not None and path.exists():
        arrays = _load_cache(path, cfg)
    else:
        rng = np.random.default_rng([cfg.seed, 0])
        walks = _add_false_boxes(cfg, _walks(cfg, rng), rng)
        names = np.array(_names(walks, rng))
        arrays = {"images": _render_all(cfg, walks), "names": names, "pid": walks["pid"], "cam": walks["cam"]}
        arrays["role"] = walks["role"]
        if path is not None:
            with atomic_path(path) as tmp:
                np.savez(tmp, **cast(dict[str, Any], {"config": np.array(cfg.model_dump_json()), **arrays}))
    fp = cfg.fingerprint()
    out: dict[str, Any] = {}
    for role, split in enumerate(SPLITS):
        rows = np.flatnonzero((arrays["role"] == role) & (arrays["pid"] != -1))
        rows = rows[np.argsort(arrays["names"][rows], kind="stable")]
        out[split] = SynthPersonsDataset(
            arrays["images"][rows],
            arrays["pid"][rows],
            arrays["cam"][rows],
            arrays["names"][rows],
            split,
            fp,
            normalize,
        )
    junk = np.flatnonzero(arrays["pid"] == -1)
    return SynthPersonsData(
        **out, junk_images=arrays["images"][junk], junk_names=list(arrays["names"][junk]), config=cfg
    )


def _load_cache(path: Path, cfg: SynthPersonsConfig) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable SynthPersons cache ({e}); delete it to re-render") from e
    if "config" not in arrays or SynthPersonsConfig.model_validate_json(str(arrays["config"])) != cfg:
        raise ValueError(f"{path}: SynthPersons cache was made with a different config; delete it to re-render")
    return arrays
