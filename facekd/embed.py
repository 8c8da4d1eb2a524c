"""EmbeddingCache: a model run once over a dataset, stored as a memory-mapped float32 matrix.

Directory layout (one cache = one directory):
    embeddings.npy  float32 (N, d), opened with np.load(mmap_mode="r")
    labels.npy      int64 (N,)
    meta.json       model checksum, dataset fingerprint, preprocessing (flip, normalize),
                    embedding_size, n, complete=true
While being written, rows go into `.part{rank}of{world}.npy` (`RowFile`: a `.npy` file whose space
is allocated in full before the first row, so a disk too small is refused at once, and which is
written with ordinary writes, never through a memory map, so a full disk is an OSError naming the
cache, not SIGBUS); `.progress{rank}of{world}.json` records how many rows are finished, so an
interrupted run continues from the last finished chunk. `meta.json` is written last: a directory
without it is not a cache. `meta.json` holds the cache's record (`cache_record`); a cache is reused
only when that record matches (`facekd.store.require_same`), and a directory being written is
locked (`facekd.store.run_lock`), so two processes never write one cache. Opening a cache checks
meta.json (a JSON object) and the `.npy` headers and sizes against it before mapping anything.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from facekd import dist, store
from facekd.models import embedding_dim
from facekd.utils import atomic_path, free_bytes, load_npy, npy_header, save_json, save_npy

FORMAT_VERSION = 1


def model_checksum(model: nn.Module) -> str:
    """sha256 over the state_dict (sorted names, dtypes, shapes and raw bytes), hex string; for a
    model that is a file (`facekd.onnx.OnnxTeacher`), its `sha256` (the file's content hash)."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    own = getattr(model, "sha256", None)
    if isinstance(own, str):
        return own
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class EmbeddingCache:
    """A finished cache directory: `.embeddings` (N, d) float32 memmap, `.labels` (N,) int64, `.meta`."""

    directory: Path
    embeddings: np.ndarray
    labels: np.ndarray
    meta: dict

    @classmethod
    def open(cls, directory: str | os.PathLike) -> EmbeddingCache:
        """Open a complete cache; raises FileNotFoundError / ValueError naming the file and what is wrong."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory}: not an embedding cache (no meta.json; unfinished or wrong path)")
        meta = store.read_record(meta_path, "embedding cache record")
        if meta.get("complete") is not True:
            raise ValueError(f'{meta_path}: cache is marked incomplete (expected "complete": true)')
        n, d = (_count(meta_path, meta, key) for key in ("n", "embedding_size"))
        emb = _open_rows(directory / "embeddings.npy", (n, d), np.float32, "embeddings")
        labels = _open_rows(directory / "labels.npy", (n,), np.integer, "labels")
        return cls(directory, emb, np.asarray(labels, dtype=np.int64), meta)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def check_rows(self, chunk: int = 65536) -> None:
        """ValueError naming embeddings.npy and the first row (and its label) that is not finite or
        has zero norm: what a model with broken weights writes. Reads the rows in chunks."""
        for start in range(0, len(self), chunk):
            x = np.asarray(self.embeddings[start : start + chunk])
            finite = np.isfinite(x).all(axis=1)
            zero = finite & ~np.any(x != 0, axis=1)
            bad = np.flatnonzero(~finite | zero)
            if bad.size:
                row = start + int(bad[0])
                what = "NaN or inf" if not finite[bad[0]] else "zero norm"
                raise ValueError(
                    f"{self.directory / 'embeddings.npy'}: row {row} (label {int(self.labels[row])}) has {what}; "
                    "expected finite, non-zero embeddings (the model that wrote the cache is broken: check its weights)"
                )

    def check_matches(self, expected: dict) -> None:
        """Raise store.RecordMismatch naming every key of `expected` whose value differs in meta.json."""
        store.require_same(
            f"embedding cache {self.directory}", self.meta, expected, "delete it or choose another output directory"
        )


# The keys of meta.json that identify a cache's rows (what `cache_record` returns).
CACHE_RECORD_KEYS = ("model_sha256", "dataset_fingerprint", "n", "flip", "normalize")


def _count(meta_path: Path, meta: dict, key: str) -> int:
    """meta.json's `key`, which must be a non-negative integer."""
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{meta_path}: {key!r} must be a non-negative integer, got {value!r}")
    return value


def _open_rows(path: Path, shape: tuple[int, ...], kind: type, what: str) -> np.ndarray:
    """The cache's `.npy` file `path` (float32 memory-mapped read-only; integer labels read), checked
    against the shape meta.json gives before anything is mapped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: cache is missing {path.name}")
    found, dtype, _ = npy_header(path)
    if found != shape or not np.issubdtype(dtype, kind):
        want = "float32" if kind is np.float32 else "integer"
        raise ValueError(f"{path}: {dtype} {found}, meta.json says {want} {shape} ({what})")
    return load_npy(path, what, mmap=kind is np.float32)


def cache_record(model: nn.Module, dataset, flip: bool, normalize: bool) -> dict:
    """What determines a cache's rows: the model's weights, the dataset's content and the preprocessing."""
    return {
        "model_sha256": model_checksum(model),
        "dataset_fingerprint": str(dataset.fingerprint()),
        "n": len(dataset),
        "flip": bool(flip),
        "normalize": bool(normalize),
    }


@torch.no_grad()
def embed_batch(model: nn.Module, images: torch.Tensor, flip: bool = False, normalize: bool = True) -> torch.Tensor:
    """Embeddings of images (B, 3, H, W) → float32 (B, d).

    flip: insightface's flip-sum, model(x) + model(x flipped left-right), summed *raw*.
    normalize: L2-normalise the (summed) embedding.
    """
    emb = model(images).float()
    if flip:
        emb = emb + model(torch.flip(images, dims=[3])).float()
    return F.normalize(emb, dim=1) if normalize else emb


def embed_dataset(
    model: nn.Module,
    dataset,
    out_dir: str | os.PathLike,
    flip: bool = False,
    batch_size: int = 256,
    normalize: bool = True,
    progress: bool = True,
    chunk_batches: int = 8,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> EmbeddingCache:
    """Run `model` over `dataset` into an EmbeddingCache at `out_dir` and return it.

    A complete cache with the same `cache_record` (model checksum, dataset fingerprint, N, flip,
    normalize) is reused; one that differs is refused (store.RecordMismatch naming the
    differences). While rows are computed `out_dir` is locked (`store.run_lock`: a second process
    is refused with the holder's pid). An interrupted run resumes from its last finished chunk
    (`chunk_batches` batches). Under torchrun each rank embeds its contiguous shard
    (`dist.shard_range`); rank 0 assembles the final file (the directory must be on a filesystem
    all ranks share). The model is put in eval mode and restored afterwards.
    """
    out_dir = Path(out_dir)
    expected = cache_record(model, dataset, flip, normalize)
    if dist.all_true((out_dir / "meta.json").exists()):
        return _reuse(out_dir, expected)
    with store.run_lock(out_dir):
        if dist.all_true((out_dir / "meta.json").exists()):  # finished by another process meanwhile
            return _reuse(out_dir, expected)
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        try:
            dim = embedding_dim(model, dataset.image_size)
            loader_kw = {"batch_size": batch_size, "num_workers": num_workers}
            _embed_shard(
                model, dataset, out_dir, expected, dim, torch.device(device), loader_kw, chunk_batches, progress
            )
        finally:
            model.train(was_training)
        w = dist.world_size()
        if w > 1:
            torch.distributed.barrier()
        if dist.rank() == 0:
            _assemble(out_dir, dataset, expected, dim, w)
        if w > 1:
            torch.distributed.barrier()
    return EmbeddingCache.open(out_dir)


def _reuse(out_dir: Path, expected: dict) -> EmbeddingCache:
    cache = EmbeddingCache.open(out_dir)
    cache.check_matches(expected)
    return cache


class RowFile:
    """A float32 (n, d) `.npy` file written block of rows by block of rows with ordinary writes.

    `create` writes the header and allocates the whole file at once (`posix_fallocate`; where the
    filesystem cannot, the free space is checked instead), so a disk too small is refused before
    any row is computed. Rows are written with `pwrite`, never through a memory map of a sparse
    file, so a disk that fills up meanwhile is an OSError (ENOSPC), never SIGBUS. OSErrors name
    `where` (the cache), not the working file. The result is an ordinary `.npy` (np.load reads it).
    """

    def __init__(self, path: Path, shape: tuple[int, int], offset: int, where: str):
        self.path, self.shape, self.offset, self.where = path, shape, offset, where
        self.row_bytes = shape[1] * 4
        self.fd = _os_call(where, os.open, path, os.O_RDWR)

    @classmethod
    def create(cls, path: Path, shape: tuple[int, int], where: str) -> RowFile:
        """A new file of `shape` at `path` (replacing any), its space allocated."""
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
        fd = _os_call(where, os.open, path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _allocate(fd, header.tell() + shape[0] * shape[1] * 4, path.parent, where)
            _os_call(where, os.pwrite, fd, header.getvalue(), 0)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return cls(path, shape, header.tell(), where)

    @classmethod
    def reopen(cls, path: Path, shape: tuple[int, int], where: str) -> RowFile | None:
        """The file of an interrupted run when it has exactly this shape and size, else None."""
        try:
            found, dtype, offset = npy_header(path)
        except (OSError, ValueError):
            return None
        if found != shape or dtype != np.float32 or path.stat().st_size != offset + shape[0] * shape[1] * 4:
            return None
        return cls(path, shape, offset, where)

    def write(self, row: int, block: np.ndarray) -> None:
        """Rows `row .. row + len(block)` (float32, (k, d))."""
        data = np.ascontiguousarray(block, dtype=np.float32).data.cast("B")
        at = self.offset + row * self.row_bytes
        while data:
            n = _os_call(self.where, os.pwrite, self.fd, data, at)
            data, at = data[n:], at + n

    def sync(self) -> None:
        _os_call(self.where, os.fsync, self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _os_call(where: str, fn, *args):
    """`fn(*args)`, its OSError re-raised naming `where`."""
    try:
        return fn(*args)
    except OSError as e:
        raise OSError(e.errno, e.strerror, where) from None


def _allocate(fd: int, size: int, directory: Path, where: str) -> None:
    """Give the file `size` bytes of disk now (ENOSPC naming `where` if the disk cannot hold them)."""
    need = f"disk full: the cache needs {_bytes(size)}"
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OSError(e.errno, need, where) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(e.errno, e.strerror, where) from None
    free = free_bytes(directory)  # no fallocate on this filesystem: check the space, then extend
    if free is not None and free < size:
        raise OSError(errno.ENOSPC, f"{need}, {_bytes(free)} free", where)
    _os_call(where, os.ftruncate, fd, size)


def _bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"


def _resume_row(prog_path: Path, part: Path, record: dict) -> int:
    """Rows of this shard already embedded by an interrupted run with the same record (else 0)."""
    if not (prog_path.exists() and part.exists()):
        return 0
    prog = store.read_record(prog_path, "embedding progress record")
    done = prog.get("done")
    if not isinstance(done, int) or isinstance(done, bool) or done < 0:
        raise store.BadRecord(f"{prog_path}: 'done' must be a non-negative integer, got {done!r}")
    return done if not store.differences(prog, record) else 0


def _open_part(part: Path, prog_path: Path, record: dict, rows: int, out_dir: Path) -> tuple[RowFile, int]:
    """This shard's row file and the rows already in it (0 for a fresh one)."""
    shape = (rows, record["embedding_size"])
    done = _resume_row(prog_path, part, record)
    out = RowFile.reopen(part, shape, str(out_dir)) if done else None
    if out is None or done > rows:
        prog_path.unlink(missing_ok=True)
        return RowFile.create(part, shape, str(out_dir)), 0
    return out, done


def _embed_shard(
    model: nn.Module,
    dataset,
    out_dir: Path,
    expected: dict,
    dim: int,
    device: torch.device,
    loader_kw: dict,
    chunk_batches: int,
    progress: bool,
) -> None:
    """This rank's rows into `.part{r}of{w}.npy`, recording progress after every chunk of batches."""
    w, r = dist.world_size(), dist.rank()
    start, stop = dist.shard_range(len(dataset), r, w)
    part, prog_path = out_dir / f".part{r}of{w}.npy", out_dir / f".progress{r}of{w}.json"
    record = {**expected, "embedding_size": dim}
    out, done = _open_part(part, prog_path, record, stop - start, out_dir)
    loader = DataLoader(Subset(dataset, range(start + done, stop)), shuffle=False, **loader_kw)
    bar = None
    if progress and dist.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, initial=done, unit="img", desc=f"embed {out_dir.name}", leave=False)
    pos = done
    try:
        for i, batch in enumerate(loader):
            idx = batch["index"].numpy()
            if not np.array_equal(idx, np.arange(start + pos, start + pos + idx.size)):
                raise ValueError(
                    f"dataset item {start + pos}: its 'index' field is {int(idx[0])}, expected the row "
                    "number (datasets must return index == position)"
                )
            image = batch["image"].to(device)
            out.write(pos, embed_batch(model, image, expected["flip"], expected["normalize"]).cpu().numpy())
            pos += idx.size
            if bar is not None:
                bar.update(idx.size)
            if (i + 1) % chunk_batches == 0 or pos == stop - start:
                out.sync()
                save_json(prog_path, {**record, "done": pos})
    finally:
        out.close()
        if bar is not None:
            bar.close()


def _assemble(out_dir: Path, dataset, expected: dict, dim: int, w: int) -> None:
    """Rank 0: join the parts into embeddings.npy, write labels.npy, then meta.json (last)."""
    parts = [out_dir / f".part{r}of{w}.npy" for r in range(w)]
    final = out_dir / "embeddings.npy"
    if w == 1:
        os.replace(parts[0], final)
    else:
        with atomic_path(final) as tmp:
            dst = RowFile.create(tmp, (expected["n"], dim), str(final))
            try:
                for r, p in enumerate(parts):
                    a, _ = dist.shard_range(expected["n"], r, w)
                    src = np.load(p, mmap_mode="r")
                    for i in range(0, src.shape[0], 65536):
                        dst.write(a + i, src[i : i + 65536])
                dst.sync()
            finally:
                dst.close()
        for p in parts:
            p.unlink()
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if labels.shape != (expected["n"],):
        raise ValueError(f"dataset.labels has shape {labels.shape}, expected ({expected['n']},)")
    save_npy(out_dir / "labels.npy", labels)
    for r in range(w):
        (out_dir / f".progress{r}of{w}.json").unlink(missing_ok=True)
    save_json(
        out_dir / "meta.json",
        {**expected, "embedding_size": dim, "complete": True, "format": FORMAT_VERSION, "dtype": "float32"},
    )


__all__ = ["EmbeddingCache", "RowFile", "cache_record", "embed_batch", "embed_dataset", "model_checksum"]
