"""In-memory image arrays as face datasets, the IDX reader (MNIST / Fashion-MNIST), image grids.

`ArrayDataset` turns uint8 arrays `(N, H, W)` (grey) or `(N, H, W, C)` (C = 1 or 3) and integer
labels into the dataset contract of `facekd.data.base`. SynthFaces builds on it.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekd.data.augment import Augmentation
from facekd.data.base import Augmentable, to_tensor_image
from facekd.utils import atomic_path


class ArrayDataset(Augmentable, torch.utils.data.Dataset):
    """Face dataset over in-memory uint8 images.

    Args:
        images: uint8 `(N, H, W)` (grey), `(N, H, W, 1)` or `(N, H, W, 3)` RGB. Grey images are
            repeated to 3 channels when read. Images must be square (the contract's `image_size`).
        labels: integer `(N,)`, values in `[0, num_classes)`.
        groups: optional integer `(N,)` demographic (or any) group per image.
        num_classes: defaults to `labels.max() + 1`.
        augment: the training augmentation as data (`facekd.data.augment.Augmentation` or a
            mapping such as {"hflip": True}), applied in `__getitem__`.
        name: used in error messages.

    Items: `{"image": float32 (3, H, W) in [-1, 1], "label": int64, "index": int64}`.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray | None = None,
        num_classes: int | None = None,
        augment: Augmentation | dict[str, Any] | None = None,
        name: str = "ArrayDataset",
    ):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"{name}: images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"{name}: images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {images.shape}")
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"{name}: images must be square, got H×W = {images.shape[1]}×{images.shape[2]}")
        n = images.shape[0]
        self.labels = _int_column(labels, n, "labels", name)
        if n and self.labels.min() < 0:
            raise ValueError(f"{name}: negative label at row {int(np.argmin(self.labels))}")
        self.num_classes = int(num_classes if num_classes is not None else (self.labels.max() + 1 if n else 0))
        if n and self.labels.max() >= self.num_classes:
            row = int(np.argmax(self.labels))
            raise ValueError(f"{name}: label {self.labels[row]} at row {row} >= num_classes {self.num_classes}")
        self.groups = None if groups is None else _int_column(groups, n, "groups", name)
        self.images = images
        self.image_size = int(images.shape[1])
        self._augment = Augmentation.parse(augment)
        self.name = name
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} images")
        index %= len(self)
        img = self.images[index]
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        x = self._augment.apply(to_tensor_image(img))
        return {
            "image": x,
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def fingerprint(self) -> str:
        """16-hex-digit SHA-1 of the images, labels, groups and class count (cached); independent
        of the augmentation."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(repr((self.images.shape, self.num_classes)).encode())
            h.update(np.ascontiguousarray(self.images).data)
            h.update(self.labels.tobytes())
            if self.groups is not None:
                h.update(self.groups.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def _int_column(values, n: int, what: str, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: {what} must be a 1-D array of length {n} (one per image), got shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: {what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# IDX files (http://yann.lecun.com/exdb/mnist/): 2 zero bytes, a type code, the number of
# dimensions, then each dimension as a big-endian uint32, then the data, big-endian, row-major.

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or `.gz`) into a native-endian numpy array of its declared shape.

    Raises ValueError naming the file when the magic number is wrong, the header or the data is
    truncated, or bytes follow the data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # bad / truncated gzip stream
        raise ValueError(f"{path}: cannot decompress: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX header: {len(raw)} bytes, expected at least 4")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}: expected 0x0000TTNN with type code "
            f"TT in {{{', '.join(f'{t:02x}' for t in _IDX_TYPES)}}} (0x00000801 = uint8 labels, "
            f"0x00000803 = uint8 images)"
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = math.prod(shape)  # Python ints: a crafted shape cannot wrap around
    expected = count * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise ValueError(f"{path}: truncated IDX data: shape {shape} needs {expected} bytes, file has {got}")
    if got > expected:
        raise ValueError(f"{path}: {got - expected} unexpected trailing bytes after IDX data of shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, offset=header, count=count)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_fashion_mnist(
    root: str | os.PathLike, split: str = "train", augment: Augmentation | dict[str, Any] | None = None
) -> ArrayDataset:
    """Fashion-MNIST (or MNIST: same file names) from `root` as an `ArrayDataset`.

    Looks for `{train,t10k}-{images-idx3,labels-idx1}-ubyte` with or without `.gz`.
    Images are 28×28 grey (repeated to RGB on read); 10 classes. Nothing is downloaded.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"Fashion-MNIST has splits {' / '.join(_FASHION_FILES)}, not {split!r}")
    root = Path(root)
    arrays = []
    for stem in _FASHION_FILES[split]:
        candidates = [root / stem, root / f"{stem}.gz"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise FileNotFoundError(f"Fashion-MNIST {split}: neither {candidates[0]} nor {candidates[1]} exists")
        arrays.append((found, read_idx(found)))
    (img_path, images), (lab_path, labels) = arrays
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{lab_path}: expected {images.shape[0]} labels (one per image in {img_path}), got shape {labels.shape}"
        )
    return ArrayDataset(images, labels.astype(np.int64), num_classes=10, augment=augment, name=f"fashion-mnist/{split}")


def save_grid(images: np.ndarray, path: str | os.PathLike, ncol: int = 16, scale: int = 1) -> None:
    """Tile uint8 images `(N, H, W, 3)` (or grey `(N, H, W)`) row-major into one PNG, atomically.

    `ncol` images per row, a 1-pixel grey border between them, each image enlarged `scale`× with
    nearest-neighbour so that small images stay readable.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"save_grid: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(f"save_grid: expected (N, H, W, 3) uint8 with N > 0, got {images.shape}")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, 3), 128, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = images[i]
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
