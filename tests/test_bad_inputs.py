"""Bad inputs through the command line: each gets exit code 2, one stderr line naming the file and
what was expected, no traceback, and no existing file changed.

The corpus is a table, `CASES`: one row per bad input, built by a function that writes it under a
temporary folder and returns the command line. Further families (configs, caches, checkpoints, run
directories, IJB meta, output locations) are added by appending rows.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from facekd.data.binset import write_bin
from facekd.data.recordio import write_recordio

SIZE = 8


def jpeg(seed: int, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A 69-byte PNG whose header declares width × height RGB pixels (one empty IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------
# RecordIO builders: a valid set (3 classes × 2 images, InsightFace layout), then one edit


def recordio(d: Path, with_header: bool = True) -> dict[int, int]:
    """Write a valid set into d/ and return {key: byte offset}."""
    write_recordio([(jpeg(k), k // 2) for k in range(6)], f"{d}/", with_header=with_header)
    lines = (d / "train.idx").read_text().split()
    return dict(zip(map(int, lines[0::2]), map(int, lines[1::2])))


def put(path: Path, at: int, data: bytes) -> None:
    b = bytearray(path.read_bytes())
    b[at : at + len(data)] = data
    path.write_bytes(bytes(b))


def rec_header_label(value: float):
    def build(d: Path) -> list[str]:
        recordio(d)
        put(d / "train.rec", 32, struct.pack("<f", value))  # record 0: 8-byte head, 24-byte IRHeader, [A, B]
        return ["inspect-rec", str(d)]

    return build


def rec_image_label(value: float):
    def build(d: Path) -> list[str]:
        off = recordio(d)
        put(d / "train.rec", off[3] + 12, struct.pack("<f", value))  # scalar label of image key 3
        return ["inspect-rec", str(d)]

    return build


def rec_identity_start(cls: int, start: float):
    def build(d: Path) -> list[str]:
        off = recordio(d)
        put(d / "train.rec", off[7 + cls] + 32, struct.pack("<f", start))  # identity records at keys 7..9
        return ["inspect-rec", str(d)]

    return build


def rec_cut_idx(with_header: bool, lines: int):
    def build(d: Path) -> list[str]:
        recordio(d, with_header)
        idx = (d / "train.idx").read_text().splitlines(keepends=True)
        (d / "train.idx").write_text("".join(idx[:-lines]))
        (d / "property").unlink()
        return ["inspect-rec", str(d)]

    return build


def rec_edit(name: str, content: bytes | None = None, at: int | None = None, data: bytes = b""):
    """Replace file `name` by `content`, or write `data` at byte `at` of it (negative: truncate there)."""

    def build(d: Path) -> list[str]:
        recordio(d)
        if content is not None:
            (d / name).write_bytes(content)
        elif at is not None and at < 0:
            (d / name).write_bytes((d / name).read_bytes()[:at])
        elif at is not None:
            put(d / name, at, data)
        return ["inspect-rec", str(d)]

    return build


def rec_missing(name: str):
    def build(d: Path) -> list[str]:
        recordio(d)
        (d / name).unlink()
        return ["inspect-rec", str(d)]

    return build


def train_config(d: Path, data: dict) -> list[str]:
    cfg = {"data": data, "model": {"arch": "mbf_tiny", "embedding_size": 8}, "train": {"epochs": 1}}
    cfg["run_dir"] = str(d / "run")
    (d / "run.yaml").write_text(yaml.safe_dump(cfg))
    return ["train", str(d / "run.yaml"), "--no-progress"]


def train_on_recordio(edit: Callable[[Path], list[str]], **data):
    def build(d: Path) -> list[str]:
        edit(d / "rec")
        return train_config(d, {"kind": "recordio", "path": str(d / "rec"), **data})

    return build


# --------------------------------------------------------------------------------------------
# image folders


def folder(d: Path, extra: dict[str, bytes] | None = None, empty: tuple[str, ...] = ()) -> Path:
    root = d / "faces"
    files = {"alice/1.jpg": jpeg(1), "alice/2.jpg": jpeg(2), "bob/1.jpg": jpeg(3), **(extra or {})}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for name in empty:
        (root / name).mkdir(parents=True)
    return root


def pack_folder(**kw):
    def build(d: Path) -> list[str]:
        root = folder(d, **kw)
        recordio(d / "out")  # an existing packed set: a failed pack must leave it as it was
        return ["pack-rec", str(root), f"{d / 'out'}/"]

    return build


def train_on_folder(**kw):
    def build(d: Path) -> list[str]:
        return train_config(d, {"kind": "folder", "path": str(folder(d, **kw))})

    return build


def list_file(content: bytes):
    def build(d: Path) -> list[str]:
        folder(d)
        (d / "faces" / "list.txt").write_bytes(content)
        return ["pack-rec", str(d / "faces" / "list.txt"), f"{d / 'out'}/"]

    return build


# --------------------------------------------------------------------------------------------
# .bin verification sets, through `facekd eval --bin`


def bin_file(content: Callable[[], bytes] | Callable[[Path], bytes]):
    def build(d: Path) -> list[str]:
        (d / "x.bin").write_bytes(content(d) if content.__code__.co_argcount else content())  # type: ignore[call-arg]
        return ["eval", "--arch", "mbf_tiny", "--checkpoint", str(CHECKPOINT), "--bin", str(d / "x.bin")]

    return build


def valid_bin(d: Path) -> bytes:
    write_bin([jpeg(k) for k in range(4)], [True, False], d / "valid.bin")
    return (d / "valid.bin").read_bytes()


CHECKPOINT = Path()  # set by the module fixture below


@dataclass(frozen=True)
class Case:
    """One bad input: `build(tmp)` writes it and returns the CLI arguments; the stderr line must
    contain every string of `expect` (a file name relative to tmp is matched as tmp/name)."""

    name: str
    build: Callable[[Path], list[str]]
    file: str
    expect: tuple[str, ...]


CASES = [
    # RecordIO: inspect-rec
    Case("rec-header-inf", rec_header_label(float("inf")), "train.rec", ("key 0", "header record label [A, B]")),
    Case("rec-header-3e38", rec_header_label(3e38), "train.rec", ("key 0", "needs integers 1 <= A <= B < 2^24")),
    Case(
        "rec-header-a-beyond-index",
        rec_edit("train.rec", at=32, data=struct.pack("<ff", 500.0, 600.0)),
        "train.idx",
        ("says images are keys 1..499", "only"),
    ),
    Case("rec-fractional-label", rec_image_label(1.5), "train.rec", ("key 3", "label 1.5 is not a class id")),
    Case("rec-negative-label", rec_image_label(-1.0), "train.rec", ("key 3", "not a class id")),
    Case("rec-nan-label", rec_image_label(float("nan")), "train.rec", ("key 3", "not a class id")),
    Case("rec-label-not-its-identity", rec_image_label(2.0), "train.rec", ("key 3", "give key 3 to class 1")),
    Case("rec-identity-overlap", rec_identity_start(1, 2.0), "train.rec", ("classes 0", "overlap")),
    Case("rec-identity-range-bad", rec_identity_start(2, 9.0), "train.rec", ("key 9", "identity record of class 2")),
    Case("rec-idx-cut-no-header", rec_cut_idx(False, 1), "train.rec", ("not covered by any record", "train.idx")),
    Case("rec-idx-cut-identities", rec_cut_idx(True, 3), "train.rec", ("not covered by any record",)),
    Case("rec-property-not-utf8", rec_edit("property", b"\xff\xfe3,8,8\n"), "property", ("non-ASCII byte 0xff",)),
    Case("rec-property-garbage", rec_edit("property", b"three,8,8\n"), "property", ("num_classes,height,width",)),
    Case("rec-property-size", rec_edit("property", b"3,16,16\n6\n"), "property", ("says images are 16x16", "8x8")),
    Case("rec-property-count", rec_edit("property", b"3,8,8\n7\n"), "property", ("says 7 images", "holds 6")),
    Case("rec-truncated", rec_edit("train.rec", at=-20), "train.rec", ("truncated record",)),
    Case("rec-bad-magic", rec_edit("train.rec", at=0, data=b"\xde\xad\xbe\xef"), "train.rec", ("bad magic",)),
    Case(
        "rec-cflag-5",
        rec_edit("train.rec", at=4, data=struct.pack("<I", (5 << 29) | 32)),
        "train.rec",
        ("key 0", "cflag"),
    ),
    Case("rec-empty-rec", rec_edit("train.rec", content=b""), "train.rec", ("empty",)),
    Case("rec-idx-garbage", rec_edit("train.idx", content=b"0\t0\n1\tforty\n"), "train.idx", (":2:", "two integers")),
    Case("rec-idx-negative", rec_edit("train.idx", content=b"0\t0\n1\t-40\n"), "train.idx", (":2:", "[0, 2^63)")),
    Case("rec-idx-huge", rec_edit("train.idx", content=b"0\t0\n1\t" + b"9" * 30 + b"\n"), "train.idx", (":2:",)),
    Case("rec-idx-not-ascii", rec_edit("train.idx", content=b"0\t0\n\xff\t40\n"), "train.idx", (":2:",)),
    Case("rec-idx-missing", rec_missing("train.idx"), "train.idx", ("does not exist",)),
    # RecordIO through `facekd train`
    Case(
        "train-rec-fractional",
        train_on_recordio(rec_image_label(0.5)),
        "rec/train.rec",
        ("label 0.5 is not a class id",),
    ),
    Case(
        "train-rec-split-test",
        train_on_recordio(recordio, split="test"),
        "run.yaml",
        ("kind recordio has split train", "not test"),
    ),
    Case("train-rec-val-without-fraction", train_on_recordio(recordio, split="val"), "run.yaml", ("val_fraction",)),
    Case(
        "train-rec-missing", lambda d: train_config(d, {"kind": "recordio", "path": str(d / "no")}), "run.yaml", ("no",)
    ),
    # image folders and list files
    Case("pack-png-bomb", pack_folder(extra={"bob/2.png": png_bomb()}), "bob/2.png", ("declares 3600000000 pixels",)),
    Case("pack-empty-identity", pack_folder(empty=("carol",)), "carol", ("holds no image",)),
    Case("pack-not-a-jpeg", pack_folder(extra={"bob/2.jpg": b"GIF89a not really"}), "bob/2.jpg", ("cannot decode",)),
    Case("pack-truncated-jpeg", pack_folder(extra={"bob/2.jpg": jpeg(9)[:200]}), "bob/2.jpg", ("decode",)),
    Case(
        "pack-first-image-bomb", pack_folder(extra={"alice/0.png": png_bomb()}), "alice/0.png", ("3600000000 pixels",)
    ),
    Case("pack-list-not-utf8", list_file(b"alice/1.jpg 0\n\xffbob/1.jpg 1\n"), "list.txt", (":2:", "not UTF-8")),
    Case("pack-list-fraction", list_file(b"alice/1.jpg 0\nbob/1.jpg 1.5\n"), "list.txt", (":2:", "non-negative")),
    Case("train-folder-empty-identity", train_on_folder(empty=("carol",)), "carol", ("holds no image",)),
    Case(
        "train-folder-bomb", train_on_folder(extra={"alice/0.png": png_bomb()}), "alice/0.png", ("3600000000 pixels",)
    ),
    # .bin verification sets
    Case(
        "bin-length-2-60",
        bin_file(lambda: b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"abc."),
        "x.bin",
        ("not a verification .bin",),
    ),
    Case(
        "bin-ndarray-called",
        bin_file(lambda: b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85\x85R."),
        "x.bin",
        ("not a verification .bin",),
    ),
    Case("bin-truncated", bin_file(lambda d: valid_bin(d)[:300]), "x.bin", ("not a verification .bin",)),
    Case(
        "bin-os-system",
        bin_file(lambda: b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."),
        "x.bin",
        ("refused to load global os.system",),
    ),
    Case("bin-png-bomb", bin_file(lambda: pickle.dumps(([png_bomb()] * 2, [True]))), "x.bin", ("3600000000 pixels",)),
    Case("bin-issame-ints", bin_file(lambda: pickle.dumps(([jpeg(1)] * 2, [1]))), "x.bin", ("issame_list[0]",)),
    Case("bin-count", bin_file(lambda: pickle.dumps(([jpeg(1)] * 3, [True]))), "x.bin", ("expected 2 x 1 = 2",)),
    Case("bin-no-pairs", bin_file(lambda: pickle.dumps(([], []))), "x.bin", ("at least one pair",)),
    Case("bin-text", bin_file(lambda: b"lfw pairs, one per line\n"), "x.bin", ("not a verification .bin",)),
    Case("bin-not-jpeg", bin_file(lambda: pickle.dumps(([b"\xff\xd8junk"] * 2, [False]))), "x.bin", ("image 0",)),
]


@pytest.fixture(scope="module", autouse=True)
def checkpoint(tmp_path_factory):
    import torch

    from facekd.models import get_model

    global CHECKPOINT
    CHECKPOINT = tmp_path_factory.mktemp("ckpt") / "backbone.pth"
    torch.save(get_model("mbf_tiny", embedding_size=8).state_dict(), CHECKPOINT)
    return CHECKPOINT


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """Run the facekd command line in this process → (exit code, stderr)."""
    from facekd.cli import app

    with pytest.raises(SystemExit) as info:
        app(args, prog_name="facekd")
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2(case: Case, tmp_path: Path, capsys):
    args = case.build(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert case.file in lines[0] and str(tmp_path) in lines[0], lines[0]
    for text in case.expect:
        assert text in lines[0], lines[0]
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # no existing file changed
    assert not [k for k in after if k not in before and not k.startswith("run/")]  # nothing new but a run dir


def test_bad_input_in_a_real_process(tmp_path: Path):
    """The same as a user sees it: a separate `facekd` process, its stderr and its exit code."""
    case = next(c for c in CASES if c.name == "rec-header-3e38")
    args = case.build(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FACEKD_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "facekd.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert case.file in proc.stderr
