"""kind folder: an image folder root/<identity>/<image> (`path`, `image_size`)."""

from __future__ import annotations

from facekd.data.registry import DataKind, register_kind
from facekd.data.spec import check_square_size, existing_path


def _check(cfg) -> None:
    existing_path(cfg)
    check_square_size(cfg)


def _build(cfg, split: str):
    from facekd.data.folder import ImageFolderDataset

    return ImageFolderDataset(cfg.path, image_size=cfg.image_size)


register_kind(DataKind("folder", _build, options=("path", "image_size"), check=_check))
