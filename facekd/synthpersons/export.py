"""Write SynthPersons as a Market-1501 release, readable by `facekd.data.reid.ReIDDataset`:

    <out>/bounding_box_train/0002_c1s1_000451_01.jpg   train people
    <out>/query/0007_c3s1_000212_00.jpg                one box per test person and camera
    <out>/bounding_box_test/...                        test people, distractors (0000), junk (-1)
    <out>/synthpersons.json                            the config and the counts

Each split folder is written under a temporary name and renamed when complete; an existing split
folder is an error (nothing is overwritten).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from facekd.data.reid import SPLIT_DIRS
from facekd.utils import save_json


def _write_folder(folder: Path, images: np.ndarray, names: list[str], quality: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for img, name in zip(images, names):
            Image.fromarray(img).save(tmp / name, format="JPEG", quality=quality)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def export_synthpersons(data, out_dir: str | os.PathLike, quality: int = 95) -> dict:
    """Write `data` (SynthPersonsData) to `out_dir` in the Market-1501 layout; returns (and writes
    to out_dir/synthpersons.json) the counts. A split folder that already exists is a ValueError."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = [d for d in SPLIT_DIRS.values() if (out / d).exists()]
    if existing:
        raise ValueError(f"{out}: {', '.join(existing)} already exist; export SynthPersons into an empty folder")
    gallery_images = np.concatenate([data.gallery.images, data.junk_images])
    gallery_names = list(data.gallery.names) + list(data.junk_names)
    parts = {
        "train": (data.train.images, list(data.train.names)),
        "query": (data.query.images, list(data.query.names)),
        "gallery": (gallery_images, gallery_names),
    }
    for split, (images, names) in parts.items():
        _write_folder(out / SPLIT_DIRS[split], images, names, quality)
    summary = {
        "root": str(out),
        "image_size": list(data.config.image_size),
        "train_images": len(data.train),
        "train_identities": int(data.train.num_classes),
        "query_images": len(data.query),
        "gallery_images": len(gallery_names),
        "gallery_distractors": int((data.gallery.pids == 0).sum()),
        "gallery_junk": len(data.junk_names),
        "config": data.config.model_dump(),
    }
    save_json(out / "synthpersons.json", summary)
    return summary
