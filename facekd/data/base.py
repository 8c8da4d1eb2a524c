"""The face dataset contract every reader in `facekd.data` follows.

An item is a dict:
    image: float32 tensor (3, H, W), RGB, normalised as insightface does: (x/255 - 0.5) / 0.5
    label: int64 identity (class) id
    index: int64 row of this item in the dataset (used to look up cached teacher embeddings)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class FaceDataset(Protocol):
    """What trainers, the embedder and the samplers need from a dataset."""

    labels: np.ndarray  # int64 (N,)
    num_classes: int
    image_size: int  # square side in pixels

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...

    def fingerprint(self) -> str:
        """Short content hash; changes whenever images, labels or preprocessing change."""
        ...


def to_tensor_image(img_hwc_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB → float32 (3, H, W) in [-1, 1], insightface's normalisation."""
    x = torch.from_numpy(np.ascontiguousarray(img_hwc_uint8)).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)
