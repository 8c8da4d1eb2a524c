"""kinds market1501 / dukemtmc: person re-ID sets (`path`, `image_size` [H, W], default [256, 128]),
splits train / query / gallery."""

from __future__ import annotations

from facekd.data.registry import DataKind, register_kind
from facekd.data.spec import existing_path


def _build(cfg, split: str):
    from facekd.data.reid import ReIDDataset

    size = cfg.image_size or (256, 128)
    return ReIDDataset(cfg.path, cfg.kind, split, image_size=(size, size) if isinstance(size, int) else size)


for _name in ("market1501", "dukemtmc"):
    register_kind(
        DataKind(
            _name, _build, splits=("train", "query", "gallery"), options=("path", "image_size"), check=existing_path
        )
    )
