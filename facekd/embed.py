"""EmbeddingCache: a model run once over a dataset, stored as a memory-mapped float32 matrix.

Directory layout (one cache = one directory):
    embeddings.npy  float32 (N, d), opened with np.load(mmap_mode="r")
    labels.npy      int64 (N,)
    meta.json       model checksum, dataset fingerprint, preprocessing (flip, normalize),
                    embedding_size, n, complete=true
While being written, rows go into `.part{rank}of{world}.npy` (a preallocated .npy memmap) and a
`.progress{rank}of{world}.json` records how many rows are finished, so an interrupted run
continues from the last finished chunk. `meta.json` is written last: a directory without it is not
a cache. `meta.json` holds the cache's record (`cache_record`); a cache is reused only when that
record matches (`facekd.store.require_same`), and a directory being written is locked
(`facekd.store.run_lock`), so two processes never write one cache.
"""

from __future__ import annotations

import hashlib
import json
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
from facekd.utils import atomic_path, save_json, save_npy

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
        """Open a complete cache; raises FileNotFoundError / ValueError naming what is wrong."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory}: not an embedding cache (no meta.json; unfinished or wrong path)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: invalid JSON ({e})") from None
        if not meta.get("complete"):
            raise ValueError(f"{meta_path}: cache is marked incomplete")
        for name in ("embeddings.npy", "labels.npy"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: cache is missing {name}")
        emb = np.load(directory / "embeddings.npy", mmap_mode="r")
        labels = np.load(directory / "labels.npy")
        n, d = meta.get("n"), meta.get("embedding_size")
        if emb.dtype != np.float32 or emb.shape != (n, d):
            raise ValueError(f"{directory}/embeddings.npy: {emb.dtype} {emb.shape}, meta.json says float32 ({n}, {d})")
        if labels.shape != (n,):
            raise ValueError(f"{directory}/labels.npy: shape {labels.shape}, meta.json says ({n},)")
        return cls(directory, emb, labels.astype(np.int64, copy=False), meta)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def check_matches(self, expected: dict) -> None:
        """Raise store.RecordMismatch naming every key of `expected` whose value differs in meta.json."""
        store.require_same(
            f"embedding cache {self.directory}", self.meta, expected, "delete it or choose another output directory"
        )


# The keys of meta.json that identify a cache's rows (what `cache_record` returns).
CACHE_RECORD_KEYS = ("model_sha256", "dataset_fingerprint", "n", "flip", "normalize")


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


def _resume_row(prog_path: Path, part: Path, record: dict) -> int:
    """Rows of this shard already embedded by an interrupted run with the same record (else 0)."""
    if not (prog_path.exists() and part.exists()):
        return 0
    prog = json.loads(prog_path.read_text())
    return int(prog["done"]) if not store.differences(prog, record) else 0


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
    done = _resume_row(prog_path, part, record)
    if done == 0:
        np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=(stop - start, dim)).flush()
    out = np.lib.format.open_memmap(part, mode="r+")
    loader = DataLoader(Subset(dataset, range(start + done, stop)), shuffle=False, **loader_kw)
    bar = None
    if progress and dist.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, initial=done, unit="img", desc=f"embed {out_dir.name}", leave=False)
    pos = done
    for i, batch in enumerate(loader):
        idx = batch["index"].numpy()
        if not np.array_equal(idx, np.arange(start + pos, start + pos + idx.size)):
            raise ValueError(
                f"dataset item {start + pos}: its 'index' field is {int(idx[0])}, expected the row "
                "number (datasets must return index == position)"
            )
        out[pos : pos + idx.size] = (
            embed_batch(model, batch["image"].to(device), expected["flip"], expected["normalize"]).cpu().numpy()
        )
        pos += idx.size
        if bar is not None:
            bar.update(idx.size)
        if (i + 1) % chunk_batches == 0 or pos == stop - start:
            out.flush()
            save_json(prog_path, {**record, "done": pos})
    if bar is not None:
        bar.close()
    out.flush()
    del out


def _assemble(out_dir: Path, dataset, expected: dict, dim: int, w: int) -> None:
    """Rank 0: join the parts into embeddings.npy, write labels.npy, then meta.json (last)."""
    parts = [out_dir / f".part{r}of{w}.npy" for r in range(w)]
    final = out_dir / "embeddings.npy"
    if w == 1:
        os.replace(parts[0], final)
    else:
        with atomic_path(final) as tmp:
            dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(expected["n"], dim))
            for r, p in enumerate(parts):
                a, b = dist.shard_range(expected["n"], r, w)
                dst[a:b] = np.load(p, mmap_mode="r")
            dst.flush()
            del dst
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


__all__ = ["EmbeddingCache", "cache_record", "embed_batch", "embed_dataset", "model_checksum"]
