"""The data kinds a config's `data: {kind: ...}` can name, one module each in `facekd.data.kinds`.

A kind says which splits it has natively, which `DataConfig` keys it reads, how to check them and
how to build the dataset of one split. Adding a data format is adding one module to
`facekd/data/kinds/` that calls `register_kind(DataKind(...))`; every module of that package is
imported on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facekd.data.spec import DataConfig


@dataclass(frozen=True)
class DataKind:
    """One data format.

    name: the `kind` value. splits: the splits the format itself has (a held-out "val" split is
    added to every kind by `val_fraction`). options: the `DataConfig` keys it reads besides the
    common ones (kind, split, augment, val_fraction, val_seed); any other key set to a non-default
    value is an error. build(cfg, split): the dataset of `split` (one of `splits`), without
    augmentation. check(cfg): extra validation, raising ValueError with one line.
    """

    name: str
    build: Callable[[DataConfig, str], Any]
    splits: tuple[str, ...] = ("train",)
    options: tuple[str, ...] = ("path",)
    check: Callable[[DataConfig], object] | None = None


_KINDS: dict[str, DataKind] = {}


def register_kind(kind: DataKind) -> DataKind:
    """Add `kind` to the registry (a second kind of the same name is an error)."""
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"data kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def _load_all() -> None:
    import facekd.data.kinds as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def kind_names() -> list[str]:
    """The registered kind names, sorted."""
    _load_all()
    return sorted(_KINDS)


def get_kind(name: str) -> DataKind:
    """The kind called `name`; ValueError listing the known kinds otherwise."""
    _load_all()
    if name not in _KINDS:
        raise ValueError(f"unknown data kind {name!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]
