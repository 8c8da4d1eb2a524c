"""kind idx: Fashion-MNIST / MNIST IDX files in a folder (`path`), splits train / test."""

from __future__ import annotations

from facekd.data.registry import DataKind, register_kind
from facekd.data.spec import existing_path


def _build(cfg, split: str):
    from facekd.data.arrays import load_fashion_mnist

    return load_fashion_mnist(cfg.path, split)


register_kind(DataKind("idx", _build, splits=("train", "test"), check=existing_path))
