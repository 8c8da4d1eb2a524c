"""Small shared helpers: atomic file output, input validation, angle units, seeding.

Every artifact facekd writes goes through `atomic_path` so that an interrupted job never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the final suffix (so `np.save` / `torch.save` / PIL do not append
    another one) and lives in the same directory (so the rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode open() would
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically, keys in insertion order (tables read back in the
    order they were built)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write one array as `.npy`, atomically."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_embeddings(x: np.ndarray, name: str = "embeddings", *, require_unit: bool = False) -> np.ndarray:
    """Validate an (N, d) embedding matrix and return it as float32.

    Raises ValueError naming how many rows are NaN/inf/zero-norm and the first few indices.
    With `require_unit`, rows are L2-normalised copies; otherwise they are returned as given.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, d) array, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty (0 rows)")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"{name}: {idx.size} rows contain NaN or inf (first: {idx[:5].tolist()})")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    zero = norms == 0
    if zero.any():
        idx = np.flatnonzero(zero)
        raise ValueError(f"{name}: {idx.size} rows have zero norm (first: {idx[:5].tolist()})")
    if require_unit:
        x = x / norms[:, None]
    return x


_ANGLE = re.compile(r"^\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*(deg|rad)\s*$")


def parse_angle(value: str | float) -> float:
    """Parse an angle with its unit ("12deg", "0.2rad") into radians. Bare numbers are refused."""
    if isinstance(value, (int, float)):
        raise ValueError(f"angle {value!r} has no unit: write e.g. '12deg' or '0.21rad'")
    m = _ANGLE.match(str(value))
    if not m:
        raise ValueError(f"cannot parse angle {value!r}: expected a number followed by 'deg' or 'rad'")
    number, unit = float(m.group(1)), m.group(2)
    return math.radians(number) if unit == "deg" else number


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
