"""Calibration images for static INT8 quantization: a facekd dataset as an onnxruntime
`CalibrationDataReader`, and the dataset itself from a data block, a YAML file or a path.

`load_dataset(spec)` accepts what users have at hand and builds it with the data layer
(`facekd.config.DataConfig` + `build_dataset`):

- a mapping (a `data:` block: `{kind: synthfaces, preset: default, cache_dir: ...}`),
- a YAML / JSON file holding either such a block or a whole run config with a `data:` key,
- a RecordIO folder or `.rec` file (insightface `train.rec` / `train.idx`), a list file (`.lst`,
  `.txt`), or an image folder (`root/<identity>/<image>`),
- a YAML flow mapping on the command line (`"{kind: synthfaces, preset: quick}"`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from onnxruntime.quantization import CalibrationDataReader

__all__ = ["DatasetCalibrationReader", "data_block", "load_dataset", "without_augmentation"]

_YAML_SUFFIXES = (".yaml", ".yml", ".json")
_LIST_SUFFIXES = (".lst", ".txt")


def _path_block(path: Path) -> dict[str, Any]:
    """The data block of an existing dataset path: RecordIO, list file or image folder."""
    if path.suffix in (".rec", ".idx") or (path.is_dir() and (path / "train.rec").is_file()):
        return {"kind": "recordio", "path": str(path.with_suffix("") if path.suffix in (".rec", ".idx") else path)}
    if path.is_file() and path.suffix in _LIST_SUFFIXES:
        return {"kind": "list", "path": str(path)}
    if path.is_dir():
        return {"kind": "folder", "path": str(path)}
    raise ValueError(f"{path}: not a RecordIO (.rec / folder with train.rec), list file or image folder")


def data_block(spec: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The `data:` block (plain dict) that `spec` describes; see the module docstring."""
    if isinstance(spec, Mapping):
        return dict(spec)
    text = str(spec)
    path = Path(text)
    if path.suffix in _YAML_SUFFIXES and path.is_file():
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping (a data block or a run config with data:)")
        block = raw.get("data", raw)
        if not isinstance(block, dict):
            raise ValueError(f"{path}: data: must be a mapping, got {type(block).__name__}")
        return block
    if path.exists() or path.with_suffix(".rec").exists():
        return _path_block(path if path.exists() else path.with_suffix(".rec"))
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None
    if not isinstance(raw, dict):
        raise ValueError(f"data {text!r}: not an existing file or folder, nor a YAML mapping such as '{{kind: ...}}'")
    return raw


def without_augmentation(dataset):
    """The same rows without random transforms (datasets that predate `without_augmentation()`
    carry none in the blocks used here, so they are returned as they are)."""
    plain = getattr(dataset, "without_augmentation", None)
    return plain() if callable(plain) else dataset


def load_dataset(spec: str | os.PathLike | Mapping[str, Any]):
    """Build the dataset `spec` describes with the data layer, without augmentation."""
    from pydantic import ValidationError

    from facekd.config import DataConfig, build_dataset

    block = data_block(spec)
    try:
        cfg = DataConfig.model_validate(block)
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'data'}: {x['msg']}" for x in e.errors())
        raise ValueError(f"data block {block}: {detail}") from None
    return without_augmentation(build_dataset(cfg))


class DatasetCalibrationReader(CalibrationDataReader):
    """`num_images` rows of a facekd dataset (drawn without replacement, seeded), in batches, as
    the feeds of an ONNX graph's single input.

    Each batch is float32 `(B, 3, H, W)`: the dataset's `[-1, 1]` images, or 0–255 pixels when
    `pixel_input` (graphs that normalise in-graph, `facekd export --pixel-input`). `rewind()`
    starts over (two calibration passes read the same images).
    """

    def __init__(
        self,
        dataset,
        num_images: int = 512,
        batch_size: int = 32,
        seed: int = 0,
        input_name: str = "data",
        pixel_input: bool = False,
    ):
        if num_images < 1 or batch_size < 1:
            raise ValueError(f"calibration needs num_images ≥ 1 and batch_size ≥ 1, got {num_images}, {batch_size}")
        n = len(dataset)
        if n == 0:
            raise ValueError("calibration dataset is empty")
        take = min(num_images, n)
        self.rows = np.sort(np.random.default_rng(seed).choice(n, size=take, replace=False))
        self.dataset, self.batch_size = dataset, batch_size
        self.input_name, self.pixel_input = input_name, pixel_input
        self._next = 0

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def rewind(self) -> None:
        self._next = 0

    def batch(self, k: int) -> np.ndarray:
        """Batch k as float32 (B, 3, H, W)."""
        rows = self.rows[k * self.batch_size : (k + 1) * self.batch_size]
        x = np.stack([self.dataset[int(i)]["image"].numpy() for i in rows]).astype(np.float32)
        return x * 127.5 + 127.5 if self.pixel_input else x

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self):
            return None
        self._next += 1
        return {self.input_name: self.batch(self._next - 1)}
