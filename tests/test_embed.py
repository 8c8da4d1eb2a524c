"""EmbeddingCache: flip-sum against a direct loop, reuse, refusal on mismatch, resume after a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TinyFaces, TinyNet

from facekd.embed import EmbeddingCache, embed_batch, embed_dataset, model_checksum


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyNet(dim=5, bn=True).eval()


def _direct(model, ds, flip, normalize):
    """One image at a time, float64 numpy: emb(x) (+ emb(x[..., ::-1])), then / ||·||."""
    rows = []
    with torch.no_grad():
        for i in range(len(ds)):
            x = ds[i]["image"][None]
            e = model(x)[0].double().numpy()
            if flip:
                e = e + model(torch.from_numpy(x.numpy()[..., ::-1].copy()))[0].double().numpy()
            rows.append(e / np.sqrt((e * e).sum()) if normalize else e)
    return np.stack(rows)


@pytest.mark.parametrize("flip,normalize", [(False, True), (True, True), (True, False)])
def test_embed_dataset_matches_direct_loop(tmp_path, flip, normalize):
    ds, model = TinyFaces(n=20), _model()
    cache = embed_dataset(model, ds, tmp_path / "c", flip=flip, normalize=normalize, batch_size=6, progress=False)
    assert isinstance(cache.embeddings, np.memmap) and cache.embeddings.dtype == np.float32
    np.testing.assert_allclose(cache.embeddings, _direct(model, ds, flip, normalize), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cache.labels, ds.labels)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["complete"] and meta["n"] == 20 and meta["embedding_size"] == 5
    assert meta["flip"] == flip and meta["normalize"] == normalize
    assert meta["model_sha256"] == model_checksum(model) and meta["dataset_fingerprint"] == ds.fingerprint()
    assert not list((tmp_path / "c").glob(".*")), "temporary files must be gone"


def test_embed_batch_flip_sum_is_raw_sum():
    model = _model()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        raw = model(x) + model(x.flip(3))
    torch.testing.assert_close(embed_batch(model, x, flip=True, normalize=False), raw)


def test_reuse_and_refusal(tmp_path):
    ds, model = TinyFaces(n=16), _model()
    out = tmp_path / "c"
    embed_dataset(model, ds, out, progress=False)
    stamp = (out / "embeddings.npy").stat().st_mtime_ns
    again = embed_dataset(model, ds, out, progress=False)
    assert (out / "embeddings.npy").stat().st_mtime_ns == stamp and len(again) == 16
    with pytest.raises(ValueError, match="model_sha256"):
        embed_dataset(_model(seed=1), ds, out, progress=False)
    with pytest.raises(ValueError, match="flip"):
        embed_dataset(model, ds, out, flip=True, progress=False)
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        embed_dataset(model, TinyFaces(n=16, seed=5), out, progress=False)


def test_model_checksum_tracks_weights():
    a, b = _model(), _model()
    assert model_checksum(a) == model_checksum(b)
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert model_checksum(a) != model_checksum(b)


class _Crashing(TinyFaces):
    def __init__(self, crash_at, **kw):
        super().__init__(**kw)
        self.crash_at, self.calls = crash_at, []

    def __getitem__(self, i):
        if self.crash_at is not None and i == self.crash_at:
            raise RuntimeError("simulated crash")
        self.calls.append(i)
        return super().__getitem__(i)


def test_interrupted_embedding_resumes_from_last_chunk(tmp_path):
    model, out = _model(), tmp_path / "c"
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_dataset(model, _Crashing(crash_at=27, n=40), out, batch_size=4, chunk_batches=2, progress=False)
    assert not (out / "meta.json").exists()
    prog = json.loads((out / ".progress0of1.json").read_text())
    assert prog["done"] == 24  # chunks of 2 batches × 4 rows; the crash was inside the 4th chunk
    ds = _Crashing(crash_at=None, n=40)
    cache = embed_dataset(model, ds, out, batch_size=4, chunk_batches=2, progress=False)
    assert sorted(set(ds.calls) - {0}) == list(range(24, 40)), "only unfinished rows are embedded again"
    np.testing.assert_allclose(cache.embeddings, _direct(model, ds, False, True), rtol=1e-5, atol=1e-6)


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        EmbeddingCache.open(tmp_path)
    embed_dataset(_model(), TinyFaces(n=8), tmp_path / "c", progress=False)
    np.save(tmp_path / "c" / "embeddings.npy", np.zeros((7, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(8, 5\)"):
        EmbeddingCache.open(tmp_path / "c")


@pytest.mark.slow
def test_a_cache_being_written_by_another_process_is_refused(tmp_path):
    from test_store import hold_lock, release

    from facekd.store import DirectoryLocked

    out = tmp_path / "c"
    holder = hold_lock(out)
    try:
        with pytest.raises(DirectoryLocked, match=f"process {holder.pid}"):
            embed_dataset(_model(), TinyFaces(n=8), out, progress=False)
        assert not list(out.glob(".part*")) and not (out / "meta.json").exists()
    finally:
        release(holder)
    embed_dataset(_model(), TinyFaces(n=8), out, progress=False)
    assert not list(out.glob(".*")), "the lock file goes with the lock"


def test_row_file_is_an_ordinary_npy_allocated_in_full(tmp_path):
    from facekd.embed import RowFile

    rows = RowFile.create(tmp_path / "r.npy", (10, 3), "cache")
    assert (tmp_path / "r.npy").stat().st_size == 128 + 10 * 3 * 4  # allocated before any row
    block = np.arange(12, dtype=np.float32).reshape(4, 3)
    rows.write(2, block)
    rows.sync()
    rows.close()
    again = RowFile.reopen(tmp_path / "r.npy", (10, 3), "cache")
    assert again is not None
    again.write(6, -block)
    again.close()
    got = np.load(tmp_path / "r.npy", mmap_mode="r")
    assert got.shape == (10, 3) and np.array_equal(got[2:6], block) and np.array_equal(got[6:10], -block)
    assert RowFile.reopen(tmp_path / "r.npy", (11, 3), "cache") is None  # another shape: start over


def test_without_fallocate_the_free_space_is_checked(tmp_path, monkeypatch):
    import errno
    import os

    import facekd.embed as embed_module

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    rows = embed_module.RowFile.create(tmp_path / "ok.npy", (4, 2), "cache")
    rows.close()
    assert (tmp_path / "ok.npy").stat().st_size == 128 + 32
    monkeypatch.setattr(embed_module, "free_bytes", lambda directory: 100)
    with pytest.raises(OSError, match="disk full: the cache needs 160 bytes, 100 bytes free") as info:
        embed_module.RowFile.create(tmp_path / "big.npy", (4, 2), str(tmp_path / "cache"))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "cache")
    assert not (tmp_path / "big.npy").exists()


def test_embedding_onto_a_full_disk_is_enospc_not_sigbus(tmp_path):
    """A cache that does not fit is refused before any row is computed, naming the cache."""
    import errno

    from test_utils import tmpfs

    with tmpfs(tmp_path / "fs", 64 << 10) as fs:
        (fs / "filler").write_bytes(b"\0" * (56 << 10))
        ds = TinyFaces(n=600)  # 600 × 5 float32 rows: 12 KiB, more than is left
        with pytest.raises(OSError, match="disk full: the cache needs") as info:
            embed_dataset(_model(), ds, fs / "c", progress=False)
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(fs / "c")
        assert sorted(p.name for p in (fs / "c").iterdir()) == []  # no part, no progress, no lock left


def test_cache_files_are_checked_before_they_are_mapped(tmp_path):
    embed_dataset(_model(), TinyFaces(n=8), tmp_path / "c", progress=False)
    emb = tmp_path / "c" / "embeddings.npy"
    emb.write_bytes(emb.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"embeddings.npy: truncated: its header says float32 \(8, 5\)"):
        EmbeddingCache.open(tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"meta.json: expected a JSON object \(embedding cache record\), got an array"):
        EmbeddingCache.open(tmp_path / "c")
