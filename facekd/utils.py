"""Small shared helpers: atomic file output, input validation, angle units, seeding.

Every artifact facekd writes goes through `atomic_path` so that an interrupted job never leaves a
half-written file under the final name, and a failing filesystem (read-only, full) is an OSError
naming the final path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the final suffix (so `np.save` / `torch.save` / PIL do not append
    another one) and lives in the same directory (so the rename is atomic on POSIX). Whatever
    fails, the temporary file is removed and `path` is left as it was. Failures of the
    filesystem are OSErrors naming `path` (not the temporary name): a `path` that is a directory
    (EISDIR), a parent that is a file (ENOTDIR), a read-only filesystem (EROFS), a full disk
    (ENOSPC: also when the writer reports it in its own words, as torch.save's "unexpected pos").
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """`atomic_path` for files that belong together (an artifact and its companion): all are
    renamed into place after the block succeeds, none if it fails."""
    finals = [Path(p) for p in paths]
    for path in finals:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file name", str(path))
        make_dirs(path.parent)
    tmps: list[Path] = []
    try:
        for path in finals:
            tmps.append(_temporary(path))
        yield tmps
        for tmp, path in zip(tmps, finals):
            os.replace(tmp, path)
    except OSError as e:
        named = _naming(e, finals)
        if named is e:
            raise
        raise named from e
    except RuntimeError as e:  # how torch.save reports a failed write ("unexpected pos ...")
        if any(out_of_space(p.parent) for p in finals):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), ", ".join(map(str, finals))) from e
        raise
    finally:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _temporary(path: Path) -> Path:
    """A new empty file beside `path` with the mode open() would give it (mkstemp creates 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(tmp)


def make_dirs(directory: str | os.PathLike) -> Path:
    """`directory` and its parents, created if missing; NotADirectoryError naming it when it, or
    one of its parents, is a file (mkdir's "File exists" says neither which nor why)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, "is a file, expected a directory", str(directory)) from None
    except NotADirectoryError:
        blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), directory)
        raise NotADirectoryError(errno.ENOTDIR, "is a file, expected a directory", str(blocker)) from None
    return directory


def _naming(e: OSError, finals: list[Path]) -> OSError:
    """`e` as an OSError of the same errno naming the final path(s) when it names a temporary file
    of `atomic_paths`, their folder, or no file at all (a failed write); else `e` itself."""
    if e.errno is None:
        return e
    if e.filename is None:
        return OSError(e.errno, e.strerror, ", ".join(map(str, finals)))
    name = Path(os.path.abspath(os.fsdecode(e.filename)))
    for path in finals:
        folder = Path(os.path.abspath(path.parent))
        if name == folder or (name.parent == folder and name.name.startswith(f".{path.stem}.")):
            return OSError(e.errno, e.strerror, str(path))
    return e


def require_writable(path: str | os.PathLike, *sizes: int) -> Path:
    """Check, before a long computation, that files of `sizes` bytes can be written at `path` (and
    beside it): `path` not a directory, its folder (or the nearest existing ancestor, where it
    will be created) a writable directory with room for them (each rounded up to whole blocks).
    OSError naming the path otherwise (EISDIR, ENOTDIR, EROFS, EACCES or ENOSPC)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file name", str(path))
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path.cwd())
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, expected a directory", str(folder))
    if not os.access(folder, os.W_OK):
        code = errno.EROFS if _read_only(folder) else errno.EACCES
        raise OSError(code, os.strerror(code), str(folder))
    free = free_bytes(folder)
    block = os.statvfs(folder).f_frsize or 1
    need = sum(-(-n // block) * block for n in sizes)
    if free is not None and free < need:
        raise OSError(errno.ENOSPC, f"disk full: {need} bytes to write, {free} free", str(path))
    return path


def free_bytes(directory: str | os.PathLike) -> int | None:
    """Bytes this user may still write on the filesystem of `directory` (root may also use the
    blocks reserved for it); None when the filesystem does not say."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def out_of_space(directory: str | os.PathLike, margin: int = 1 << 20) -> bool:
    """Whether the filesystem holding `directory` has less than `margin` bytes left for this user."""
    free = free_bytes(directory)
    return free is not None and free < margin


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


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a `.npy` file, read from its header alone.

    ValueError naming the file when it is not a `.npy` array file, when it holds Python objects
    (pickled data is never loaded), or when it is shorter than its header says (what memory
    mapping it would fail on)."""
    path = Path(path)
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            major, _ = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except (ValueError, SyntaxError, TypeError, EOFError, UnicodeDecodeError) as e:
            detail = " ".join(str(e).split())[:120]
            raise ValueError(f"{path}: not a NumPy .npy array file ({detail})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects (dtype {dtype}); expected an array of numbers")
    need = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise ValueError(
            f"{path}: truncated: its header says {dtype} {tuple(shape)} ({need} bytes), the file has {size} bytes"
        )
    return tuple(shape), dtype, offset


def load_npy(path: str | os.PathLike, what: str = "array", mmap: bool = False) -> np.ndarray:
    """A `.npy` array checked by `npy_header` first (one line naming the file for anything that is
    not a complete array of numbers); memory-mapped read-only with `mmap` (empty arrays are read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    shape, _, _ = npy_header(path)
    return np.load(path, mmap_mode="r" if mmap and 0 not in shape else None, allow_pickle=False)


def load_torch(path: str | os.PathLike, what: str = "checkpoint", mmap: bool = False):
    """`torch.load(path, weights_only=True)` on CPU: the one way facekd reads a `torch.save` file.

    Only tensors and plain containers are ever built (a file that would create other objects or
    run code is refused, never loaded). Every failure is one line naming the file: missing
    (FileNotFoundError), a directory (IsADirectoryError), damaged or truncated, not a
    `torch.save` file, or refused by the restricted unpickler (what it refused, from PyTorch's
    own explanation, without its advice to turn the restriction off). `what` names the file's
    role in the message ("checkpoint", "training checkpoint", "teacher head", ...). `mmap` maps the
    tensors' storage from the file instead of reading it (a zip-format file only).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"{what} does not exist", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"is a directory, expected a {what} file", str(path))
    with open(path, "rb") as f:
        head = f.read(4)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip, or (legacy) a pickle
        raise ValueError(
            f"{path}: not a torch.save {what} (starts with {head!r}, neither a zip archive nor a pickle); "
            "expected a state_dict saved with torch.save"
        )
    try:
        with warnings.catch_warnings():  # its note on pickle protocols is no concern of the user's
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as e:
        if e.errno is not None:
            raise
        reason = _first_sentence(str(e))
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused to load this {what}: {_weights_only_reason(str(e))}") from None
    except (RuntimeError, EOFError) as e:
        reason = _first_sentence(str(e)) or "the file ends early"
        raise ValueError(
            f"{path}: damaged or truncated {what} ({type(e).__name__}: {reason}); expected a complete torch.save file"
        ) from None
    except Exception as e:  # anything else torch.load trips over: not its format at all
        reason = f"{type(e).__name__}: {_first_sentence(str(e))}"
    raise ValueError(f"{path}: not a torch.save {what} ({reason}); expected a state_dict saved with torch.save")


def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of a (multi-line) message, on one line."""
    text = " ".join(text.split())
    cut = re.search(r"(?<=[a-z0-9)])\. ", text)
    return (text[: cut.start() + 1] if cut else text)[:limit]


def _weights_only_reason(message: str) -> str:
    """What torch's restricted unpickler refused, from its multi-line explanation (the part after
    "WeightsUnpickler error:", or the paragraph after the opening one), without its advice on how
    to allow it."""
    text = message
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif text.startswith("Weights only load failed"):
        parts = re.split(r"\n\s*\n", text, maxsplit=1)
        text = parts[1] if len(parts) > 1 else ""
    text = re.split(r"Please use|Check the documentation", text, maxsplit=1)[0]
    detail = " ".join(text.split()).removesuffix(" by default.").rstrip(".")
    return (
        f"{detail or 'content the restricted unpickler does not allow'}; a checkpoint may hold only tensors and "
        "plain containers (this one would build other objects or run code on load); expected a state_dict saved "
        "with torch.save(model.state_dict(), path)"
    )


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
    """Parse an angle with its unit ("12deg", "0.2rad") into radians, in (0, π]. Bare numbers are
    refused, and so are angles outside (0°, 180°] (every angle facekd takes — a kernel bandwidth, a
    margin, a yaw — lies between two directions)."""
    if isinstance(value, (int, float)):
        raise ValueError(f"angle {value!r} has no unit: write e.g. '12deg' or '0.21rad'")
    m = _ANGLE.match(str(value))
    if not m:
        raise ValueError(f"cannot parse angle {value!r}: expected a number followed by 'deg' or 'rad'")
    number, unit = float(m.group(1)), m.group(2)
    radians = math.radians(number) if unit == "deg" else number
    if not 0 < radians <= math.pi:
        raise ValueError(f"angle {value!r} is outside (0°, 180°]: expected e.g. '12deg' or '0.21rad'")
    return radians


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
