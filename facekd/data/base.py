"""The face dataset contract every reader in `facekd.data` follows.

An item is a dict:
    image: float32 tensor (3, H, W), RGB, normalised as insightface does: (x/255 - 0.5) / 0.5
    label: int64 identity (class) id
    index: int64 row of this item in the dataset (used to look up cached teacher embeddings)

A dataset also carries its augmentation as data (`facekd.data.augment`): `augmentation` (a plain
mapping), `with_augmentation(spec)` and `without_augmentation()`; `fingerprint()` describes the
content only and never depends on the augmentation.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from facekd.data.augment import Augmentation


@runtime_checkable
class FaceDataset(Protocol):
    """What trainers, the embedder and the samplers need from a dataset."""

    labels: np.ndarray  # int64 (N,)
    num_classes: int
    image_size: int  # square side in pixels

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...

    @property
    def augmentation(self) -> dict[str, Any]: ...

    def without_augmentation(self) -> FaceDataset: ...

    def fingerprint(self) -> str:
        """Short content hash, the same in every process; changes whenever images, labels or
        deterministic preprocessing (size, normalisation) change, never with the augmentation."""
        ...


_D = TypeVar("_D", bound="Augmentable")


class Augmentable:
    """Mixin: the augmentation of a dataset as data, and copies with another one."""

    _augment: Augmentation = Augmentation()

    @property
    def augmentation(self) -> dict[str, Any]:
        """The augmentation spec as plain data, e.g. {"hflip": False}."""
        return self._augment.describe()

    def with_augmentation(self: _D, spec: Augmentation | dict[str, Any] | None) -> _D:
        """A shallow copy (same arrays / files, same rows and order) applying `spec`."""
        out = copy.copy(self)
        out._augment = Augmentation.parse(spec)
        return out

    def without_augmentation(self: _D) -> _D:
        """The same rows, labels and order with no random transform."""
        return self.with_augmentation(None)


def to_tensor_image(img_hwc_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB → float32 (3, H, W) in [-1, 1], insightface's normalisation."""
    x = torch.from_numpy(np.ascontiguousarray(img_hwc_uint8)).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)
