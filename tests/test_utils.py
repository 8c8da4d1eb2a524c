"""facekd.utils: atomic output (all or none, failures naming the final path, a full disk recognised
whatever words the writer uses), output checks, guarded `.npy` and `torch.save` reading, angles."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.utils import (
    atomic_path,
    atomic_paths,
    load_npy,
    load_torch,
    make_dirs,
    npy_header,
    parse_angle,
    require_writable,
)


@contextlib.contextmanager
def tmpfs(where: Path, size: int, read_only: bool = False):
    """A small tmpfs at `where` (root and mount(8) needed, else the test is skipped)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_atomic_paths_renames_all_or_none(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    a.write_bytes(b"old a")
    with pytest.raises(RuntimeError, match="boom"), atomic_paths(a, b) as (ta, tb):
        ta.write_bytes(b"new a")
        tb.write_bytes(b"new b")
        raise RuntimeError("boom")
    assert a.read_bytes() == b"old a" and not b.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]
    with atomic_paths(a, b) as (ta, tb):
        ta.write_bytes(b"new a")
        tb.write_bytes(b"new b")
    assert a.read_bytes() == b"new a" and b.read_bytes() == b"new b"
    assert oct(a.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # the mode open() would give


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_path_names_the_final_path(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError) as info, atomic_path(tmp_path / "folder"):
        pass
    assert info.value.filename == str(tmp_path / "folder")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as info2, atomic_path(tmp_path / "afile" / "x.json"):
        pass
    assert info2.value.filename == str(tmp_path / "afile")
    with pytest.raises(OSError) as info3, atomic_path(tmp_path / "out.bin") as tmp:  # a write that names no file
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert info3.value.errno == errno.EIO and info3.value.filename == str(tmp_path / "out.bin") and not tmp.exists()
    with pytest.raises(FileNotFoundError) as info4, atomic_path(tmp_path / "out.bin"):  # an input's error is kept
        open(tmp_path / "missing.txt")
    assert info4.value.filename == str(tmp_path / "missing.txt")


def test_make_dirs_names_the_file_in_the_way(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        make_dirs(tmp_path / "afile" / "b" / "c")
    assert info.value.filename == str(tmp_path / "afile") and "is a file" in info.value.strerror
    with pytest.raises(NotADirectoryError, match="expected a directory"):
        make_dirs(tmp_path / "afile")


def test_a_full_disk_is_enospc_naming_the_path_whatever_the_writer_says(tmp_path):
    """torch.save on a full disk raises RuntimeError('... unexpected pos ...'): atomic_path turns it
    into ENOSPC naming the final path, and leaves no temporary file behind."""
    with tmpfs(tmp_path / "fs", 256 << 10) as fs:
        with pytest.raises(OSError) as info, atomic_path(fs / "big.pt") as tmp:
            torch.save({"w": torch.zeros(200_000)}, tmp)
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(fs / "big.pt")
        assert isinstance(info.value.__cause__, RuntimeError)
        assert list(fs.iterdir()) == []
        with pytest.raises(OSError) as info2, atomic_path(fs / "big.npy") as tmp:
            np.save(tmp, np.zeros(100_000))
        assert info2.value.errno == errno.ENOSPC and info2.value.filename == str(fs / "big.npy")


def test_read_only_filesystem(tmp_path):
    with tmpfs(tmp_path / "fs", 64 << 10, read_only=True) as fs:
        with pytest.raises(OSError) as info, atomic_path(fs / "x.json"):
            pass
        assert info.value.errno == errno.EROFS and info.value.filename == str(fs / "x.json")
        with pytest.raises(OSError) as info2:
            require_writable(fs / "sub" / "x.npy")
        assert info2.value.errno == errno.EROFS and info2.value.filename == str(fs)


def test_require_writable(tmp_path):
    assert require_writable(tmp_path / "new" / "x.npy", 100) == tmp_path / "new" / "x.npy"
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        require_writable(tmp_path / "d")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        require_writable(tmp_path / "f" / "x.npy")
    assert info.value.filename == str(tmp_path / "f")
    with pytest.raises(OSError, match="disk full") as info2:
        require_writable(tmp_path / "x.npy", 1 << 62)
    assert info2.value.errno == errno.ENOSPC


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a NumPy .npy array file"),
        (b"0.1 0.2 0.3\n", "not a NumPy .npy array file"),
        (pickle.dumps(np.zeros(3)), "not a NumPy .npy array file"),
        (_npy(np.array([{}, []], dtype=object)), "holds Python objects"),
        (_npy(np.zeros((4, 3), np.float32))[:-1], r"truncated: its header says float32 \(4, 3\) \(176 bytes\)"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x'}  \n", "not a NumPy .npy array file"),
    ],
)
def test_bad_npy_files_are_one_line_and_never_mention_allow_pickle(tmp_path, content, message):
    path = tmp_path / "x.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_npy(path, mmap=True)
    assert str(path) in str(info.value) and "allow_pickle" not in str(info.value) and "\n" not in str(info.value)


def test_npy_header_and_load(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "a.npy", a)
    shape, dtype, offset = npy_header(tmp_path / "a.npy")
    assert shape == (4, 3) and dtype == np.float32 and offset + a.nbytes == (tmp_path / "a.npy").stat().st_size
    m = load_npy(tmp_path / "a.npy", mmap=True)
    assert isinstance(m, np.memmap) and np.array_equal(m, a)
    np.save(tmp_path / "e.npy", np.zeros((0, 3), np.float32))
    assert load_npy(tmp_path / "e.npy", mmap=True).shape == (0, 3)  # nothing to map: read
    with pytest.raises(FileNotFoundError, match="labels file not found"):
        load_npy(tmp_path / "missing.npy", "labels")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_torch_refuses_and_explains_in_one_line(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    assert torch.equal(load_torch(good)["w"], torch.ones(3))
    data = good.read_bytes()
    cases = {
        "truncated.pt": (data[: len(data) // 2], "damaged or truncated checkpoint"),
        "empty.pt": (b"", "damaged or truncated checkpoint"),
        "text.pt": (b"weights\n" * 8, "not a torch.save checkpoint"),
        "code.pt": (pickle.dumps(_RunsCode(), protocol=2), "refused to load this checkpoint: .*GLOBAL posix.system"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message) as info:
            load_torch(tmp_path / name)
        text = str(info.value)
        assert text.startswith(str(tmp_path / name)) and "\n" not in text
        assert "weights_only=False" not in text and "add_safe_globals" not in text  # never advice to lift the guard
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ValueError, match="GLOBAL torch.nn.modules.linear.Linear was not an allowed global;"):
        load_torch(tmp_path / "module.pt", "teacher head")
    with pytest.raises(FileNotFoundError) as missing:
        load_torch(tmp_path / "nope.pt", "training checkpoint")
    assert missing.value.filename == str(tmp_path / "nope.pt") and "training checkpoint" in missing.value.strerror
    with pytest.raises(IsADirectoryError):
        load_torch(tmp_path)


@pytest.mark.parametrize("text, degrees", [("12deg", 12.0), ("180deg", 180.0), ("0.5rad", np.degrees(0.5))])
def test_parse_angle(text, degrees):
    assert np.degrees(parse_angle(text)) == pytest.approx(degrees)


@pytest.mark.parametrize("text", ["720deg", "0deg", "-5deg", "3.2rad", "181deg"])
def test_angles_outside_0_180_are_refused(text):
    with pytest.raises(ValueError, match=r"outside \(0°, 180°\]"):
        parse_angle(text)
