"""Training augmentation as plain data.

An augmentation is described by a small mapping, e.g. `{"hflip": true}` in YAML
(`data: {augment: {hflip: true}}`), validated by `Augmentation`. Every facekd dataset holds one:
`dataset.augmentation` is that mapping, `dataset.with_augmentation(spec)` a copy that applies it,
and `dataset.without_augmentation()` the same rows, labels and order with no random transform
(what teacher caches are embedded from). A dataset's `fingerprint()` never depends on it:
augmentation is not content. A run that trains with augmentation records the spec beside the
fingerprint.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from facekd.data.transforms import random_hflip


class Augmentation(BaseModel):
    """The random transforms applied to each training image, as data.

    hflip: mirror left-right with probability 0.5 (torch's global generator, which the DataLoader
        seeds per worker), as arcface_torch's RandomHorizontalFlip.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hflip: bool = False

    @classmethod
    def parse(cls, spec: object) -> Augmentation:
        """An Augmentation from itself, a mapping or None (no augmentation); ValueError on
        anything else (a callable transform is not data)."""
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if not isinstance(spec, dict):
            raise ValueError(
                f"augmentation must be a mapping such as {{'hflip': True}}, got {type(spec).__name__} "
                "(transforms are described as data, not passed as callables)"
            )
        try:
            return cls.model_validate(spec)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ValueError(f"augmentation {spec!r}: {problems}") from None

    @property
    def is_identity(self) -> bool:
        """True when nothing random is applied."""
        return not self.hflip

    def describe(self) -> dict[str, Any]:
        """The spec as plain JSON data (every field, defaults included)."""
        return self.model_dump()

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """Apply to one float (3, H, W) image in [-1, 1]."""
        return random_hflip(image) if self.hflip else image
