"""Person re-ID datasets: Market-1501 and DukeMTMC-reID (layout and rules of fast-reid and
reid-strong-baseline).

Splits live in `bounding_box_train/` (train), `query/` and `bounding_box_test/` (gallery). File
names start with `<pid>_c<cam>` (`0002_c1s1_000451_03.jpg`, `0005_c2_f0046985.jpg`), parsed with
`([-\\d]+)_c(\\d)`. pid -1 (junk boxes) is dropped at load time; pid 0 (Market distractors) is kept
as a gallery negative. Cameras must be 1–6 (Market) or 1–8 (Duke) and are stored 0-based.
Training pids are relabelled to 0..C-1 in sorted order (reid-strong-baseline).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekd.data.augment import Augmentation
from facekd.data.folder import _FileListDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME = re.compile(r"([-\d]+)_c(\d)")


@dataclass(frozen=True)
class ReIDSpec:
    """A re-ID benchmark's folder names and id / camera ranges."""

    name: str
    subdirs: tuple[str, ...]  # accepted dataset folders under the given root (first found wins)
    num_cams: int
    max_pid: int | None


SPECS = {
    "market1501": ReIDSpec("market1501", ("Market-1501-v15.09.15", "market1501"), 6, 1501),
    "dukemtmc": ReIDSpec("dukemtmc", ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID"), 8, None),
}


def parse_reid_name(name: str, spec: ReIDSpec, where: str = "") -> tuple[int, int]:
    """File name → (pid, 0-based camera id); ValueError naming the file on a bad name or range."""
    m = _NAME.search(name)
    if m is None:
        raise ValueError(
            f"{where or name}: file name does not start with '<pid>_c<camera>' (e.g. 0002_c1s1_000451_03.jpg)"
        )
    pid, cam = int(m.group(1)), int(m.group(2))
    if pid < -1 or (spec.max_pid is not None and pid > spec.max_pid):
        raise ValueError(
            f"{where or name}: person id {pid} outside -1..{spec.max_pid if spec.max_pid else 'inf'} for {spec.name}"
        )
    if not 1 <= cam <= spec.num_cams:
        raise ValueError(f"{where or name}: camera {cam} outside 1..{spec.num_cams} for {spec.name}")
    return pid, cam - 1


def find_reid_root(root: str | os.PathLike, spec: ReIDSpec) -> Path:
    """The folder holding the split folders: root itself or one of spec.subdirs under it."""
    root = Path(root)
    for cand in [*(root / s for s in spec.subdirs), root]:
        if (cand / SPLIT_DIRS["train"]).is_dir() or (cand / SPLIT_DIRS["query"]).is_dir():
            return cand
    raise FileNotFoundError(
        f"{spec.name}: no {'/'.join(SPLIT_DIRS.values())} folders under {root} "
        f"or {', '.join(str(root / s) for s in spec.subdirs)}"
    )


class ReIDDataset(_FileListDataset):
    """One split of Market-1501 / DukeMTMC-reID as a dataset.

    Args:
        root: the dataset folder or its parent (see ReIDSpec.subdirs for the accepted names).
        dataset: "market1501" or "dukemtmc".
        split: "train", "query" or "gallery".
        image_size: (H, W), default (256, 128) (reid-strong-baseline); images are resized with
            PIL bilinear (Market crops are 128 × 64).
        normalize: "imagenet" (default; (x/255 - mean)/std with ImageNet statistics) or "face"
            (insightface's (x/255 - 0.5)/0.5).
        relabel: map pids to 0..C-1 (sorted) for `labels`; default True for train, False otherwise.
    Attributes: `pids` (original ids, int64), `camids` (0-based, int64), `labels`, `num_classes`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        dataset: str = "market1501",
        split: str = "train",
        image_size: tuple[int, int] = (256, 128),
        normalize: str = "imagenet",
        augment: Augmentation | dict[str, Any] | None = None,
        relabel: bool | None = None,
    ):
        if dataset not in SPECS:
            raise ValueError(f"unknown re-ID dataset {dataset!r}; expected one of {sorted(SPECS)}")
        if split not in SPLIT_DIRS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_DIRS)}")
        if normalize not in ("imagenet", "face"):
            raise ValueError(f"normalize must be 'imagenet' or 'face', got {normalize!r}")
        spec = SPECS[dataset]
        folder = find_reid_root(root, spec) / SPLIT_DIRS[split]
        if not folder.is_dir():
            raise FileNotFoundError(f"{spec.name}: split folder {folder} does not exist")
        paths, pids, cams = [], [], []
        self.num_junk = 0
        for f in sorted(folder.glob("*.jpg")):
            pid, cam = parse_reid_name(f.name, spec, str(f))
            if pid == -1:
                self.num_junk += 1
                continue
            paths.append(f)
            pids.append(pid)
            cams.append(cam)
        if not paths:
            raise ValueError(f"{folder}: no usable .jpg images")
        self.paths = paths
        self.pids = np.asarray(pids, dtype=np.int64)
        self.camids = np.asarray(cams, dtype=np.int64)
        relabel = split == "train" if relabel is None else relabel
        if relabel:
            uniq, self.labels = np.unique(self.pids, return_inverse=True)
            self.labels = self.labels.astype(np.int64)
            self.num_classes = len(uniq)
        else:
            self.labels = self.pids.copy()
            self.num_classes = int(self.pids.max()) + 1
        self.dataset, self.split, self.normalize = dataset, split, normalize
        self.base_dir = folder
        super().__init__((int(image_size[0]), int(image_size[1])), augment, resize=True)

    def _to_tensor(self, img: np.ndarray) -> torch.Tensor:
        if self.normalize == "face":
            return super()._to_tensor(img)
        x = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
        return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]

    def _item(self, i: int, img: np.ndarray) -> dict:
        item = super()._item(i, img)
        item["camid"] = torch.tensor(int(self.camids[i]), dtype=torch.int64)
        return item

    def _fingerprint_parts(self) -> list[str]:
        return [self.dataset, self.split, self.normalize, *super()._fingerprint_parts()]
