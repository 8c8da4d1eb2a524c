"""The run store: when finished work may be reused, and which process may write a directory.

Everything facekd can reuse (a training run, an embedding cache, a ReFO stage, a demo experiment)
is decided the same way:

- **Records.** What determines a result is written down as plain data (a *record*: config values,
  the dataset's content fingerprint and augmentation, the identity of a teacher or a sampler, and
  where it matters `source_digest` of the module that computes it). `plain(obj)` checks that a
  record is plain data — dicts with string keys, lists, tuples, str, int, float, bool, None, paths
  (as strings), numpy arrays (by content hash) — and refuses anything else (callables, arbitrary
  objects) with a clear error: nothing is ever hashed by its name or its `repr()`.
  `digest(record)` is the sha256 of its canonical JSON; `result_key(record)` the same without the
  `RESUMABLE` settings: the key of a result.
- **Matching.** `differences(saved, now)` lists the keys of a new record whose values differ from
  the saved one; `require_same` turns them into one error line. The settings in `RESUMABLE` may
  change between a killed run and its resume without changing the result, so they are never
  compared (listed here once, for every kind of run).
- **Locks.** `lock(directory)` holds an exclusive `fcntl.flock` on `directory/.lock` (which holds
  the pid) for as long as the block runs; a second process is refused at once with
  `DirectoryLocked`, one line naming the holder's pid and the directory. The kernel releases the
  lock when its process dies, so a lock file left behind by a killed process never blocks.
  `run_lock` is the same under torchrun: rank 0 locks and every rank learns the outcome.
- **Done markers.** `mark_done` writes `done` (atomically) last; `invalidate` removes `done` first
  and then the artifacts it vouched for, so a fresh run that is killed never leaves a `done`
  beside old weights.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import inspect
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePath
from types import ModuleType
from typing import Any

import numpy as np

from facekd import dist
from facekd.utils import save_json

# Settings that may change between a killed run and its resume without changing its result.
RESUMABLE = frozenset({"checkpoint_every", "log_every", "num_workers", "device"})

LOCK_FILE = ".lock"
DONE_FILE = "done"


class NotPlainData(TypeError):
    """A record holds something that is not plain data (a callable, an arbitrary object)."""


class RecordMismatch(ValueError):
    """A directory holds the result of a different record."""


class DirectoryLocked(ValueError):
    """Another process holds the directory's lock."""


# --------------------------------------------------------------------------------------------
# records and digests
# --------------------------------------------------------------------------------------------


def array_digest(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (C order)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def plain(obj: Any, where: str = "record") -> Any:
    """`obj` as JSON-able plain data, or NotPlainData naming where the first offending value sits.

    Paths become strings and numpy arrays `{"ndarray": sha256, "dtype", "shape"}`; numpy scalars
    become Python numbers; tuples become lists. Sets, tensors, callables, modules and other objects
    are refused (describe them as data first, e.g. a sampler's `describe()`).
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return {"ndarray": array_digest(obj), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise NotPlainData(f"{where}: key {bad[0]!r} is not a string (records are JSON objects)")
        return {k: plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    what = f"callable {getattr(obj, '__qualname__', type(obj).__qualname__)}" if callable(obj) else "object"
    raise NotPlainData(
        f"{where}: {what} of type {type(obj).__qualname__} is not plain data (dicts, lists, strings, numbers, "
        "booleans, None, paths, numpy arrays); it is never hashed by name or repr: describe it as data"
    )


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of plain data (sorted keys, no spaces): what `digest` hashes."""
    return json.dumps(plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of plain data: a content key for a result."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def without_resumable(record: Any, resumable: Iterable[str] = RESUMABLE) -> Any:
    """`record` (plain data) without the keys named in `resumable`, at any depth."""
    skip = set(resumable)
    if isinstance(record, dict):
        return {k: without_resumable(v, skip) for k, v in record.items() if k not in skip}
    if isinstance(record, list):
        return [without_resumable(v, skip) for v in record]
    return record


def result_key(record: Mapping) -> str:
    """The content key of a result: `digest` of its record without the RESUMABLE settings."""
    return digest(without_resumable(plain(record)))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_digest(*modules: ModuleType) -> str:
    """sha256 of the source text of `modules` (in the order given): part of a result key when the
    code that computes the result may change it."""
    h = hashlib.sha256()
    for module in modules:
        h.update(f"{module.__name__}\0{inspect.getsource(module)}\0".encode())
    return h.hexdigest()


def _flatten(record: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_ABSENT = object()


def differences(saved: Mapping, now: Mapping, ignore: Iterable[str] = RESUMABLE) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, new value) for every key of `now` whose value differs in `saved`.

    Keys of `saved` that `now` does not have are outputs (e.g. an embedding cache's
    `embedding_size`) and are not compared. A key whose last part is in `ignore` (default
    `RESUMABLE`) is never compared.
    """
    saved = plain(saved, "saved")
    old, new = _flatten(saved), _flatten(plain(now, "now"))
    skip = set(ignore)
    return [
        (k, _lookup(saved, k), v)
        for k, v in sorted(new.items())
        if k.rsplit(".", 1)[-1] not in skip and old.get(k, _ABSENT) != v
    ]


def _lookup(record: Any, dotted: str) -> Any:
    """The value at a dotted key of a nested record (a whole block where `now` has a leaf), else None."""
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def require_same(where: str, saved: Mapping, now: Mapping, hint: str, ignore: Iterable[str] = RESUMABLE) -> None:
    """RecordMismatch (one line naming every differing key) unless `now` matches `saved`."""
    diffs = differences(saved, now, ignore)
    if diffs:
        detail = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in diffs)
        raise RecordMismatch(f"{where} holds a different result ({detail}); {hint}")


# --------------------------------------------------------------------------------------------
# locks
# --------------------------------------------------------------------------------------------

_HELD: dict[Path, list[int]] = {}  # locked directory → [fd, depth] (re-entrant within a process)


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def _acquire(directory: Path) -> int:
    """Open and flock directory/.lock (non-blocking); write our pid into it; return the fd."""
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise DirectoryLocked(
                f"{directory} is in use by {_holder(path)} (lock file {path}); "
                "wait for it to finish or use another directory"
            ) from None
        try:  # the previous holder removes the file when it lets go: lock the file that is there now
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextlib.contextmanager
def lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of `directory` (created if missing) while the block runs.

    Raises DirectoryLocked at once if another process holds it. Re-entrant within one process (a
    training run locks its directory, and `train()` inside it locks it again). The lock file is
    removed on exit; one left by a dead process is taken over.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if directory in _HELD:
        _HELD[directory][1] += 1
        try:
            yield directory
        finally:
            _HELD[directory][1] -= 1
        return
    fd = _acquire(directory)
    _HELD[directory] = [fd, 1]
    try:
        yield directory
    finally:
        del _HELD[directory]
        with contextlib.suppress(FileNotFoundError):
            (directory / LOCK_FILE).unlink()
        os.close(fd)


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[None]:
    """`lock(directory)` for a job that may run under torchrun: rank 0 takes the lock, and every
    rank raises DirectoryLocked when it could not (a collective: all ranks must call it)."""
    with contextlib.ExitStack() as held:
        error: DirectoryLocked | None = None
        if dist.is_main():
            try:
                held.enter_context(lock(directory))
            except DirectoryLocked as e:
                error = e
        if not dist.all_true(error is None):
            raise error or DirectoryLocked(f"{directory}: rank 0 could not lock it")
        yield


# --------------------------------------------------------------------------------------------
# done markers
# --------------------------------------------------------------------------------------------


def is_done(directory: str | os.PathLike) -> bool:
    return (Path(directory) / DONE_FILE).is_file()


def read_done(directory: str | os.PathLike) -> dict:
    """The record written by `mark_done` (ValueError naming the file if it is unreadable)."""
    path = Path(directory) / DONE_FILE
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def mark_done(directory: str | os.PathLike, record: Mapping) -> None:
    """Write `directory/done` (atomically) holding `record`: the last file a finished run writes."""
    save_json(Path(directory) / DONE_FILE, plain(record))


def invalidate(directory: str | os.PathLike, artifacts: Iterable[str | os.PathLike] = ()) -> None:
    """Remove `done` first, then `artifacts` (paths relative to `directory`): afterwards nothing
    in the directory claims to be a finished result, whatever happens next."""
    directory = Path(directory)
    (directory / DONE_FILE).unlink(missing_ok=True)
    for name in artifacts:
        (directory / name).unlink(missing_ok=True)


__all__ = [
    "DONE_FILE",
    "LOCK_FILE",
    "RESUMABLE",
    "DirectoryLocked",
    "NotPlainData",
    "RecordMismatch",
    "array_digest",
    "canonical_json",
    "differences",
    "digest",
    "file_digest",
    "invalidate",
    "is_done",
    "lock",
    "mark_done",
    "plain",
    "read_done",
    "require_same",
    "result_key",
    "run_lock",
    "source_digest",
    "without_resumable",
]
