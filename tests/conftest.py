"""Shared tiny fixtures for the spine tests (train, embed, config, cli, demo).

`TinyFaces` and `TinyNet` are importable from subprocess scripts too
(`sys.path.insert(0, tests_dir); from conftest import TinyFaces, TinyNet`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)


class TinyFaces(torch.utils.data.Dataset):
    """n images (3, size, size) in [-1, 1]: a per-class template plus noise; follows the
    facekd dataset contract (items dict with image / label / index; labels, num_classes,
    image_size, fingerprint(), augmentation, without_augmentation(), groups)."""

    def __init__(self, n: int = 64, num_classes: int = 4, size: int = 8, seed: int = 0, delay: float = 0.0):
        g = np.random.default_rng(seed)
        self.labels = (np.arange(n) % num_classes).astype(np.int64)
        templates = g.uniform(-1, 1, size=(num_classes, 3, size, size))
        self.images = np.clip(templates[self.labels] + 0.3 * g.standard_normal((n, 3, size, size)), -1, 1)
        self.images = self.images.astype(np.float32)
        self.groups = (np.arange(n) % 2).astype(np.int64)
        self.num_classes = num_classes
        self.image_size = size
        self.delay = delay

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if self.delay:
            import time

            time.sleep(self.delay)
        return {
            "image": torch.from_numpy(self.images[i]),
            "label": torch.tensor(self.labels[i]),
            "index": torch.tensor(i, dtype=torch.int64),
        }

    def fingerprint(self) -> str:
        return hashlib.sha256(self.images.tobytes() + self.labels.tobytes()).hexdigest()[:16]

    @property
    def augmentation(self) -> dict:
        """No random transform."""
        return {}

    def without_augmentation(self) -> TinyFaces:
        return self


class TinyNet(nn.Module):
    """conv → ReLU → (optional BN) → global pool → linear; forward(x, return_features=False)."""

    def __init__(self, dim: int = 6, bn: bool = False, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8, dim)

    def forward(self, x, return_features: bool = False):
        f = self.bn(torch.relu(self.conv(x)))
        emb = self.fc(self.drop(f.mean(dim=(2, 3))))
        return (emb, [f]) if return_features else emb


class LinearHead(nn.Module):
    """Plain softmax head with the facekd head signature forward(embeddings, labels)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes, bias=False)

    def forward(self, emb, labels):
        return self.fc(emb)
