"""The run store: digests of plain data (objects refused), record matching, per-directory locks, done markers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from facekd import store

ROOT = Path(__file__).resolve().parent.parent


def test_digest_is_a_function_of_content_only():
    a = {"name": "intrinsic", "options": {"bandwidth": 0.2, "num": 100}, "path": Path("/x/list.npy")}
    b = {"path": "/x/list.npy", "options": {"num": 100, "bandwidth": 0.2}, "name": "intrinsic"}
    assert store.digest(a) == store.digest(b), "key order and Path vs str do not matter"
    assert store.digest({"x": (1, 2)}) == store.digest({"x": [1, 2]})
    assert store.digest({"x": np.float32(0.5)}) == store.digest({"x": 0.5})
    arr = np.arange(6, dtype=np.int64)
    assert store.digest({"idx": arr}) == store.digest({"idx": arr.copy()})
    assert store.digest({"idx": arr}) != store.digest({"idx": arr[::-1].copy()})
    assert store.digest({"idx": arr}) != store.digest({"idx": arr.astype(np.int32)})
    assert store.digest({"idx": arr}) != store.digest({"idx": arr.reshape(2, 3)})


def test_samplers_differing_only_in_bandwidth_get_different_digests():
    is12 = {"name": "intrinsic", "options": {"bandwidth": np.radians(12.0), "num": 5000, "seed": 0}}
    is3 = {"name": "intrinsic", "options": {"bandwidth": np.radians(3.0), "num": 5000, "seed": 0}}
    assert store.digest({"sampler": is12}) != store.digest({"sampler": is3})


def _epoch_fn(epoch):
    return np.arange(4)


class _Opaque:
    pass


@pytest.mark.parametrize(
    "value,where",
    [
        (_epoch_fn, r"record\.sampler: callable _epoch_fn of type function"),
        (lambda e: e, r"record\.sampler: callable <lambda> of type function"),
        (_Opaque(), r"record\.sampler: object of type _Opaque"),
        ({"fn": _epoch_fn}, r"record\.sampler\.fn: callable _epoch_fn"),
        ([1, {2, 3}], r"record\.sampler\[1\]: object of type set"),
    ],
)
def test_callables_and_objects_are_refused_not_hashed_by_name(value, where):
    with pytest.raises(store.NotPlainData, match=where) as info:
        store.digest({"sampler": value})
    assert "never hashed by name or repr" in str(info.value)


def test_non_string_keys_are_refused():
    with pytest.raises(store.NotPlainData, match="key 1"):
        store.plain({1: "a"})


def _module_from(path: Path, text: str):
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_source_digest_follows_the_source(tmp_path):
    a = store.source_digest(_module_from(tmp_path / "exp_a.py", "X = 1\n"))
    assert a == store.source_digest(_module_from(tmp_path / "exp_a.py", "X = 1\n"))
    assert a != store.source_digest(_module_from(tmp_path / "exp_a.py", "X = 2\n"))


def test_differences_ignore_resumable_settings_and_outputs():
    saved = {"train": {"lr": 0.1, "log_every": 20, "device": "cpu"}, "embedding_size": 8, "n": 4}
    now = {"train": {"lr": 0.1, "log_every": 5, "device": "cuda:0"}, "n": 4}
    assert store.differences(saved, now) == []
    now["train"]["lr"] = 0.2
    now["distill"] = {"loss": "l2"}
    assert store.differences(saved, now) == [("distill.loss", None, "l2"), ("train.lr", 0.1, 0.2)]
    with pytest.raises(
        store.RecordMismatch, match=r"^runs/x holds a different result \(distill\.loss: .*train\.lr: saved"
    ):
        store.require_same("runs/x", saved, now, "use another directory")


def test_a_block_replaced_by_null_is_a_difference():
    assert store.differences({"distill": {"loss": "l2"}}, {"distill": None}) == [("distill", {"loss": "l2"}, None)]


_HOLDER = textwrap.dedent("""
    import sys
    from facekd import store
    with store.lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")


def hold_lock(directory: Path) -> subprocess.Popen:
    """A separate process holding `store.lock(directory)` until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        with pytest.raises(store.DirectoryLocked) as info:
            with store.lock(run):
                pass
        msg = str(info.value)
        assert f"process {holder.pid}" in msg and str(run) in msg and "\n" not in msg
    finally:
        release(holder)
    with store.lock(run):  # released on exit
        assert (run / store.LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (run / store.LOCK_FILE).exists(), "the lock file is removed on release"


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with store.lock(tmp_path), store.lock(tmp_path), store.run_lock(tmp_path):
        assert (tmp_path / store.LOCK_FILE).exists()
    assert not (tmp_path / store.LOCK_FILE).exists()


def test_a_stale_lock_file_of_a_dead_process_does_not_block(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / store.LOCK_FILE).write_text(dead.stdout)
    with store.lock(tmp_path):
        assert (tmp_path / store.LOCK_FILE).read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_killed_holder_releases_the_lock(tmp_path):
    holder = hold_lock(tmp_path)
    holder.kill()
    holder.wait()
    assert (tmp_path / store.LOCK_FILE).exists(), "a killed holder leaves its lock file behind"
    with store.lock(tmp_path):
        pass


def test_invalidate_removes_done_before_the_artifacts(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("backbone.pth", "checkpoints/last.pt", "metrics.jsonl"):
        (tmp_path / name).write_text("x")
    store.mark_done(tmp_path, {"step": 3, "path": Path("a")})
    assert store.is_done(tmp_path) and store.read_done(tmp_path) == {"step": 3, "path": "a"}
    store.invalidate(tmp_path, ["backbone.pth", "checkpoints/last.pt", "head.pth"])
    assert not store.is_done(tmp_path)
    assert not (tmp_path / "backbone.pth").exists() and not (tmp_path / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "metrics.jsonl").exists()


def test_result_key_leaves_out_resumable_settings():
    a = {"config": {"train": {"lr": 0.1, "log_every": 20, "num_workers": 0}}, "sampler": None}
    b = {"config": {"train": {"lr": 0.1, "log_every": 5, "num_workers": 8}}, "sampler": None}
    assert store.result_key(a) == store.result_key(b) and store.digest(a) != store.digest(b)
    assert store.result_key(a) != store.result_key({**a, "config": {"train": {"lr": 0.2}}})
