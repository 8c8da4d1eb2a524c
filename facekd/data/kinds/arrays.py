"""kind arrays: a .npz with uint8 `images` and integer `labels` (+ optional `groups`)."""

from __future__ import annotations

import zipfile

import numpy as np

from facekd.data.registry import DataKind, register_kind
from facekd.data.spec import existing_path


def _build(cfg, split: str):
    from facekd.data.arrays import ArrayDataset

    try:
        with np.load(cfg.path, allow_pickle=False) as z:
            missing = {"images", "labels"} - set(z.files)
            if missing:
                raise ValueError(f"{cfg.path}: missing arrays {sorted(missing)} (expected uint8 images and int labels)")
            arrays = {k: z[k] for k in ("images", "labels", "groups") if k in z.files}
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{cfg.path}: not a readable .npz of images and labels ({e})") from None
    return ArrayDataset(arrays["images"], arrays["labels"], arrays.get("groups"), name=str(cfg.path))


register_kind(DataKind("arrays", _build, check=existing_path))
