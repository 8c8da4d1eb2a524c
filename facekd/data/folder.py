"""Image folders (`root/<identity>/*.jpg`) and list files (`path label` lines) as face datasets.

Also home of `EncodedImageDataset`, the base class every encoded-image reader in `facekd.data`
shares: it turns "bytes of image i" into the dataset contract of `facekd.data.base`, decoding
through the guarded `facekd.data.images.decode_image`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekd.data.augment import Augmentation
from facekd.data.base import Augmentable, to_tensor_image
from facekd.data.images import decode_image, encode_jpeg, image_size, resize_rgb, verify_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Transform = Callable[[torch.Tensor], torch.Tensor]  # the IJB reader's transform argument

__all__ = [
    "IMAGE_EXTENSIONS",
    "EncodedImageDataset",
    "ImageFolderDataset",
    "ListFileDataset",
    "decode_image",
    "encode_jpeg",
    "resize_rgb",
]


class EncodedImageDataset(Augmentable, torch.utils.data.Dataset):
    """Base class: a dataset of encoded images with integer labels, following `facekd.data.base`.

    Subclasses set `self.labels` (int64 (N,)), `self.num_classes`, and implement
    `_encoded(i) -> (bytes, where)` and `_fingerprint_parts() -> list[str]`.

    Options (shared by every reader):
        image_size: square side H = W in pixels. A decoded image of another size is a ValueError
            naming the image, unless `resize=True` (then PIL bilinear to image_size × image_size).
        augment: the training augmentation as data (`facekd.data.augment.Augmentation`, a mapping
            such as {"hflip": True}, or None), applied to the float (3, H, W) tensor in [-1, 1];
            anything else (e.g. a callable transform) is a ValueError.
    """

    labels: np.ndarray
    num_classes: int

    def __init__(
        self,
        image_size: int | tuple[int, int],
        augment: object = None,
        resize: bool = False,
    ):
        self.image_size = image_size
        self._augment = Augmentation.parse(augment)
        self.resize = resize

    @property
    def _shape(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def _encoded(self, i: int) -> tuple[bytes, str]:
        raise NotImplementedError

    def _fingerprint_parts(self) -> list[str]:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load_image(self, i: int) -> np.ndarray:
        """Decoded image i as uint8 (H, W, 3) RGB at `image_size` (checked or resized)."""
        data, where = self._encoded(i)
        img = decode_image(data, where)
        if img.shape[:2] != self._shape:
            if not self.resize:
                raise ValueError(
                    f"{where}: image is {img.shape[0]}x{img.shape[1]}, expected "
                    f"{self._shape[0]}x{self._shape[1]} (pass resize=True to resize)"
                )
            img = resize_rgb(img, self._shape)
        return img

    def _to_tensor(self, img: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) → float32 (3, H, W); insightface's normalisation (x/255 - 0.5)/0.5."""
        return to_tensor_image(img)

    def verify_image(self, i: int) -> np.ndarray:
        """`load_image` with a strict decode (corrupt JPEG data is an error, see `images.verify_image`)."""
        data, where = self._encoded(i)
        verify_image(data, where)
        return self.load_image(i)

    def _item(self, i: int, img: np.ndarray) -> dict:
        x = self._augment.apply(self._to_tensor(img))
        return {
            "image": x,
            "label": torch.tensor(int(self.labels[i]), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        return self._item(i, self.load_image(i))

    def fingerprint(self) -> str:
        """sha1 (16 hex) of the reader, its content description, the labels, the image size and
        the resize setting; the same in every process and independent of the augmentation."""
        h = hashlib.sha1()
        parts = [type(self).__name__, *self._fingerprint_parts(), f"size:{self._shape}", f"resize:{self.resize}"]
        for part in parts:
            h.update(part.encode() + b"\0")
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped line) of a UTF-8 text file; ValueError naming the line otherwise."""
    out = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            out.append((lineno, raw.decode("utf-8").strip()))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"
            ) from None
    return out


def _infer_size(path: Path, where: str | None = None) -> int:
    where = where or str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{where}: cannot read image: {e.strerror or e}") from None
    h, w = image_size(data, where)
    if w != h:
        raise ValueError(f"{where}: image is {h}x{w}; pass image_size= (and resize=True) for non-square images")
    return h


class _FileListDataset(EncodedImageDataset):
    """Images read from files: `self.paths` (list of Path); the fingerprint holds each path
    relative to `self.base_dir` with its size and modification time."""

    paths: list[Path]
    base_dir: Path

    def _encoded(self, i: int) -> tuple[bytes, str]:
        path = self.paths[i]
        try:
            return path.read_bytes(), self._where(i)
        except OSError as e:
            raise FileNotFoundError(f"{self._where(i)}: cannot read image: {e.strerror or e}") from None

    def _where(self, i: int) -> str:
        return str(self.paths[i])

    def _fingerprint_parts(self) -> list[str]:
        parts = []
        for p in self.paths:
            name = os.path.relpath(p, self.base_dir)
            try:
                st = p.stat()
                parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{name}:missing")
        return parts


class ImageFolderDataset(_FileListDataset):
    """`root/<identity>/<image>` → dataset; identities sorted by name get class ids 0..C-1.

    Like torchvision's ImageFolder (without depending on it). Files with extensions in
    IMAGE_EXTENSIONS count; others are ignored; an identity folder without any such file is an
    error (it would be a class without images). `image_size=None` reads it from the first image's
    header. `.classes` holds the identity folder names, `.paths` the image paths.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        augment: Augmentation | dict[str, Any] | None = None,
        resize: bool = False,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
        self.root = self.base_dir = root
        self.classes = sorted(d.name for d in _list_dir(root) if d.is_dir())
        if not self.classes:
            raise ValueError(f"image folder {root}: no identity sub-folders (expected root/<identity>/*.jpg)")
        paths, labels = [], []
        for c, name in enumerate(self.classes):
            files = sorted(f for f in _list_dir(root / name) if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not files:
                raise ValueError(
                    f"image folder {root}: identity folder {root / name} holds no image "
                    f"(expected at least one {'/'.join(IMAGE_EXTENSIONS)} file; remove the folder or add images)"
                )
            paths += files
            labels += [c] * len(files)
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.classes)
        super().__init__(image_size or _infer_size(paths[0]), augment, resize)


def _list_dir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise FileNotFoundError(f"{folder}: cannot list the folder: {e.strerror or e}") from None


class ListFileDataset(_FileListDataset):
    """A list file of `relative/path.jpg label` lines (FaceX-Zoo style) → dataset.

    Paths are relative to `root` (default: the list file's folder); the label is the last
    whitespace-separated field (so paths may contain spaces). Blank lines and lines starting with
    '#' are skipped. `num_classes` = max label + 1 unless given. The file is UTF-8.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        root: str | os.PathLike | None = None,
        image_size: int | None = None,
        augment: Augmentation | dict[str, Any] | None = None,
        resize: bool = False,
        num_classes: int | None = None,
    ):
        list_file = Path(list_file)
        if not list_file.is_file():
            raise FileNotFoundError(f"list file {list_file} does not exist")
        self.list_file = list_file
        self.base_dir = Path(root) if root is not None else list_file.parent
        self.paths, labels, self.line_numbers = [], [], []
        for lineno, line in _text_lines(list_file):
            if not line or line.startswith("#"):
                continue
            fields = line.rsplit(None, 1)
            if len(fields) != 2:
                raise ValueError(f"{list_file}:{lineno}: expected 'path label', got {line!r}")
            if not fields[1].isdigit():
                raise ValueError(f"{list_file}:{lineno}: label {fields[1]!r} is not a non-negative integer")
            self.paths.append(self.base_dir / fields[0])
            labels.append(int(fields[1]))
            self.line_numbers.append(lineno)
        if not self.paths:
            raise ValueError(f"list file {list_file}: no 'path label' lines")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1 if num_classes is None else int(num_classes)
        if self.labels.max() >= self.num_classes:
            raise ValueError(f"list file {list_file}: label {self.labels.max()} >= num_classes={self.num_classes}")
        if image_size is None:
            image_size = _infer_size(self.paths[0], self._where(0))
        super().__init__(image_size, augment, resize)

    def _where(self, i: int) -> str:
        return f"{self.list_file}:{self.line_numbers[i]}: {self.paths[i]}"
