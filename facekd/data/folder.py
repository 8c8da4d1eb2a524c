"""Image folders (`root/<identity>/*.jpg`) and list files (`path label` lines) as face datasets.

Also home of the pieces every encoded-image reader in `facekd.data` shares: `decode_image`
(JPEG/PNG bytes → uint8 RGB with PIL) and `EncodedImageDataset`, the base class that turns
"bytes of image i" into the dataset contract of `facekd.data.base`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facekd.data.base import to_tensor_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Transform = Callable[[torch.Tensor], torch.Tensor]


def decode_image(data: bytes | np.ndarray, where: str) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, …) → uint8 (H, W, 3) RGB, decoded with PIL.

    `where` names the source (file, key, offset) in the ValueError raised on undecodable data.
    """
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for corrupt/truncated data
        raise ValueError(f"{where}: cannot decode image ({len(data)} bytes): {e}") from e


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (size[0], size[1], 3), PIL bilinear (no-op when already that size)."""
    if img.shape[:2] == tuple(size):
        return img
    return np.array(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """uint8 (H, W, 3) RGB → JPEG bytes (PIL, 4:2:0 like OpenCV's default)."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {img.dtype} {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class EncodedImageDataset(torch.utils.data.Dataset):
    """Base class: a dataset of encoded images with integer labels, following `facekd.data.base`.

    Subclasses set `self.labels` (int64 (N,)), `self.num_classes`, and implement
    `_encoded(i) -> (bytes, where)` and `_fingerprint_parts() -> list[str]`.

    Options (shared by every reader):
        image_size: square side H = W in pixels. A decoded image of another size is a ValueError
            naming the image, unless `resize=True` (then PIL bilinear to image_size × image_size).
        transform: optional callable on the float (3, H, W) tensor in [-1, 1] (e.g.
            `facekd.data.transforms.random_hflip`), applied after normalisation.
    """

    labels: np.ndarray
    num_classes: int

    def __init__(self, image_size: int | tuple[int, int], transform: Transform | None = None, resize: bool = False):
        self.image_size = image_size
        self.transform = transform
        self.resize = resize

    @property
    def _shape(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

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

    def _item(self, i: int, img: np.ndarray) -> dict:
        x = self._to_tensor(img)
        if self.transform is not None:
            x = self.transform(x)
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

    def without_augmentation(self) -> EncodedImageDataset:
        """The same rows, labels and order with no random transform."""
        out = copy.copy(self)
        out.transform = None
        return out

    def fingerprint(self) -> str:
        """sha1 (16 hex) of the content description, the labels, the size and the preprocessing."""
        h = hashlib.sha1()
        for part in self._fingerprint_parts() + [repr(self._shape), repr(self.resize), repr(self.transform)]:
            h.update(part.encode() + b"\0")
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def _infer_size(path: Path) -> int:
    with Image.open(path) as im:
        w, h = im.size
    if w != h:
        raise ValueError(f"{path}: image is {h}x{w}; pass image_size= (and resize=True) for non-square images")
    return h


class _FileListDataset(EncodedImageDataset):
    """Images read from files: `self.paths` (list of Path), plus size/mtime in the fingerprint."""

    paths: list[Path]

    def _encoded(self, i: int) -> tuple[bytes, str]:
        path = self.paths[i]
        try:
            return path.read_bytes(), self._where(i)
        except OSError as e:
            raise FileNotFoundError(f"{self._where(i)}: cannot read image: {e}") from e

    def _where(self, i: int) -> str:
        return str(self.paths[i])

    def _fingerprint_parts(self) -> list[str]:
        parts = []
        for p in self.paths:
            try:
                st = p.stat()
                parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{p}:missing")
        return parts


class ImageFolderDataset(_FileListDataset):
    """`root/<identity>/<image>` → dataset; identities sorted by name get class ids 0..C-1.

    Like torchvision's ImageFolder (without depending on it). Files with extensions in
    IMAGE_EXTENSIONS count; others are ignored. `image_size=None` reads it from the first image.
    `.classes` holds the identity folder names, `.paths` the image paths.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        transform: Transform | None = None,
        resize: bool = False,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
        self.root = root
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise ValueError(f"image folder {root}: no identity sub-folders (expected root/<identity>/*.jpg)")
        paths, labels = [], []
        for c, name in enumerate(self.classes):
            files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            paths += files
            labels += [c] * len(files)
        if not paths:
            raise ValueError(f"image folder {root}: no images with extensions {IMAGE_EXTENSIONS}")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.classes)
        super().__init__(image_size or _infer_size(paths[0]), transform, resize)


class ListFileDataset(_FileListDataset):
    """A list file of `relative/path.jpg label` lines (FaceX-Zoo style) → dataset.

    Paths are relative to `root` (default: the list file's folder); the label is the last
    whitespace-separated field (so paths may contain spaces). Blank lines and lines starting with
    '#' are skipped. `num_classes` = max label + 1 unless given.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        root: str | os.PathLike | None = None,
        image_size: int | None = None,
        transform: Transform | None = None,
        resize: bool = False,
        num_classes: int | None = None,
    ):
        list_file = Path(list_file)
        if not list_file.is_file():
            raise FileNotFoundError(f"list file {list_file} does not exist")
        root = Path(root) if root is not None else list_file.parent
        paths, labels, self.line_numbers = [], [], []
        with open(list_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.rsplit(None, 1)
                if len(fields) != 2:
                    raise ValueError(f"{list_file}:{lineno}: expected 'path label', got {line!r}")
                try:
                    label = int(fields[1])
                except ValueError:
                    raise ValueError(f"{list_file}:{lineno}: label {fields[1]!r} is not an integer") from None
                if label < 0:
                    raise ValueError(f"{list_file}:{lineno}: label {label} is negative")
                paths.append(root / fields[0])
                labels.append(label)
                self.line_numbers.append(lineno)
        if not paths:
            raise ValueError(f"list file {list_file}: no 'path label' lines")
        self.list_file = list_file
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1 if num_classes is None else int(num_classes)
        if self.labels.max() >= self.num_classes:
            raise ValueError(f"list file {list_file}: label {self.labels.max()} >= num_classes={self.num_classes}")
        if image_size is None:
            if not paths[0].is_file():
                raise FileNotFoundError(f"{list_file}:{self.line_numbers[0]}: image {paths[0]} does not exist")
            image_size = _infer_size(paths[0])
        super().__init__(image_size, transform, resize)

    def _where(self, i: int) -> str:
        return f"{self.list_file}:{self.line_numbers[i]}: {self.paths[i]}"
