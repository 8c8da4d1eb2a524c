"""kind recordio: an InsightFace RecordIO set (`path` = folder or train.rec prefix, `image_size`)."""

from __future__ import annotations

from pathlib import Path

from facekd.data.registry import DataKind, register_kind
from facekd.data.spec import check_square_size


def _check(cfg) -> None:
    if cfg.path is None:
        raise ValueError("kind recordio needs a path")
    p = Path(cfg.path)
    if not (p.exists() or p.with_suffix(".rec").exists()):
        raise ValueError(f"data path {cfg.path} does not exist (neither a folder nor a {p.with_suffix('.rec')} file)")
    check_square_size(cfg)


def _build(cfg, split: str):
    from facekd.data.recordio import RecordIODataset

    return RecordIODataset(cfg.path, image_size=cfg.image_size)


register_kind(DataKind("recordio", _build, options=("path", "image_size"), check=_check))
