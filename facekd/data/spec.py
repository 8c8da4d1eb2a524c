"""The `data:` block of a run config and the dataset it describes.

    data: {kind: synthfaces, preset: default, split: train}
    data: {kind: recordio, path: /data/ms1m-retinaface-t1, augment: {hflip: true}}
    data: {kind: idx, path: data/fashion, val_fraction: 0.1, val_seed: 0, split: val}

`kind` names a registered data kind (`facekd.data.registry`; one module per kind in
`facekd/data/kinds/`). `split` is one of the kind's own splits, or "val" when `val_fraction` holds
out a class-stratified part of the train split (`facekd.data.split`); with `val_fraction`,
`split: train` is the rest. A split the kind does not have is an error naming the kind and its
splits, never a silent substitution. `augment` is the training augmentation as data
(`facekd.data.augment.Augmentation`); `hflip: true` is read as `augment: {hflip: true}`.
`build_dataset(cfg)` returns the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facekd.data.augment import Augmentation
from facekd.data.registry import DataKind, get_kind

COMMON_KEYS = ("kind", "split", "augment", "val_fraction", "val_seed")


class DataConfig(BaseModel):
    """kind synthfaces: `preset` + `synthfaces` overrides of SynthFacesConfig (+ `cache_dir`),
    splits train / val / test. synthpersons: `preset` + `synthpersons` overrides of
    SynthPersonsConfig (+ `cache_dir`), splits train / query / gallery. recordio: `path` = folder
    or prefix of train.rec/.idx; folder: `path` = root/<id>/<img>; list: `path` = list file;
    arrays: `path` = .npz with uint8 `images` and int `labels`; idx: `path` = folder of
    Fashion-MNIST / MNIST IDX files, splits train / test;
    market1501 / dukemtmc: `path` = the re-ID dataset folder (or its parent), splits train / query /
    gallery, `image_size` [H, W] (default [256, 128]), ImageNet normalisation. Every kind: `split:
    val` with `val_fraction` (see the module docstring), `augment`."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "synthfaces"
    split: str = "train"
    path: Path | None = None
    preset: Literal["quick", "default", "full"] = "default"
    synthfaces: dict[str, Any] = Field(default_factory=dict)
    synthpersons: dict[str, Any] = Field(default_factory=dict)
    cache_dir: Path | None = None
    image_size: int | tuple[int, int] | None = Field(None, description="[H, W] only for re-ID kinds")
    augment: Augmentation = Field(default_factory=Augmentation)
    val_fraction: float | None = Field(None, gt=0, lt=1, description="hold out this fraction as split val")
    val_seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _hflip_shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "hflip" in raw:
            raw = dict(raw)
            hflip = raw.pop("hflip")
            augment = dict(raw.get("augment") or {})
            if "hflip" in augment and augment["hflip"] != hflip:
                raise ValueError(f"hflip: {hflip} contradicts augment.hflip: {augment['hflip']}; give augment only")
            raw["augment"] = {**augment, "hflip": hflip}
        return raw

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        kind = get_kind(self.kind)
        check_split(kind, self.split, self.val_fraction)
        unused = [
            key
            for key, field in DataConfig.model_fields.items()
            if key not in COMMON_KEYS
            and key not in kind.options
            and getattr(self, key) != field.get_default(call_default_factory=True)
        ]
        if unused:
            raise ValueError(
                f"kind {self.kind} does not use {' / '.join(unused)} (it reads {' / '.join(kind.options)})"
            )
        if kind.check is not None:
            kind.check(self)
        return self


def check_split(kind: DataKind, split: str, val_fraction: float | None) -> None:
    """ValueError naming the kind and its splits unless `split` is one of them."""
    if split == "val" and (val_fraction is not None or "val" in kind.splits):
        return  # held out of train with val_fraction, else the kind's own val split
    if split == "val":
        raise ValueError(
            f"split val of kind {kind.name} needs val_fraction (e.g. val_fraction: 0.1) to hold out "
            f"part of its train split; its own splits are {' / '.join(kind.splits)}"
        )
    if split not in kind.splits:
        extra = "" if "val" in kind.splits else " (and val with val_fraction)"
        raise ValueError(f"kind {kind.name} has split {' / '.join(kind.splits)}{extra}, not {split}")


def build_dataset(cfg: DataConfig):
    """The dataset described by `cfg` (see DataConfig), with its augmentation."""
    from facekd.data.split import Subset, split_rows

    kind = get_kind(cfg.kind)
    check_split(kind, cfg.split, cfg.val_fraction)
    held_out = cfg.val_fraction is not None and cfg.split in ("train", "val")
    ds = kind.build(cfg, "train" if held_out else cfg.split)
    if held_out:
        assert cfg.val_fraction is not None
        ds = Subset(ds, split_rows(ds.labels, cfg.split, cfg.val_fraction, cfg.val_seed), cfg.split)
    return ds.with_augmentation(cfg.augment) if not cfg.augment.is_identity else ds


def check_square_size(cfg: DataConfig) -> None:
    """ValueError unless `image_size` is one int (square faces) or None."""
    if isinstance(cfg.image_size, tuple):
        raise ValueError(f"kind {cfg.kind} takes one int image_size (square images), not {list(cfg.image_size)}")


def existing_path(cfg: DataConfig) -> Path:
    """cfg.path, which must be given and exist (a one-line ValueError otherwise)."""
    if cfg.path is None:
        raise ValueError(f"kind {cfg.kind} needs a path")
    if not Path(cfg.path).exists():
        raise ValueError(f"data path {cfg.path} does not exist")
    return Path(cfg.path)
