"""Bad inputs through the command line: each gets exit code 2, one stderr line naming the file and
what was expected, no traceback, and no existing file changed.

The corpus is a table, `CASES`: one row per bad input, built by a function that writes it under a
temporary folder and returns the command line. Families: RecordIO, image folders and list files,
`.bin` sets, YAML configs, embedding caches, checkpoints, run directories, IJB meta and output
locations. Output locations on a read-only or a full filesystem get a small tmpfs mounted at
tmp/fs (the case writes what it needs there first; then it is remounted read-only, or filled up
to `free` bytes); they need root and mount(8), and are skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
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
    """One bad input: `build(tmp)` writes it and returns the CLI arguments (run in tmp); the stderr
    line must contain every string of `expect`, and `file` with tmp's path (`relative`: as given).

    `fs`: "ro" or "full" mounts a small tmpfs at tmp/fs before `build` (which may write into it),
    then remounts it read-only or fills it until `free` bytes are left. `new_files`: the folder
    (relative to tmp) where the failed command may leave new files (a run directory's record)."""

    name: str
    build: Callable[[Path], list[str]]
    file: str
    expect: tuple[str, ...]
    fs: str | None = None
    free: int = 0
    relative: bool = False
    new_files: str = "run/"


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


# --------------------------------------------------------------------------------------------
# YAML run configs, through `facekd train`


def arrays_data(d: Path, n: int = 16) -> Path:
    """`n` random 32×32 RGB images (the module checkpoint's input size) of 4 classes at d/data.npz."""
    rng = np.random.default_rng(0)
    path = d / "data.npz"
    np.savez(path, images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % 4)
    return path


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config(text: str | bytes | None = None, overrides: tuple[str, ...] = (), **extra):
    """`facekd train run.yaml`: the YAML `text` as given, else a valid config (arrays data, mbf_tiny,
    run_dir tmp/run) with the blocks of `extra` merged in (a value "@name" is the path tmp/name)."""

    def build(d: Path) -> list[str]:
        path = d / "run.yaml"
        if text is not None:
            path.write_bytes(text.encode() if isinstance(text, str) else text)
        else:
            base = {
                "data": {"kind": "arrays", "path": str(arrays_data(d))},
                "model": {"arch": "mbf_tiny", "embedding_size": 8},
                "train": {"epochs": 1, "batch_size": 8},
                "run_dir": str(d / "run"),
            }
            path.write_text(yaml.safe_dump(at_paths(merged(base, extra), d)))
        return ["train", str(path), *overrides, "--no-progress"]

    return build


def at_paths(obj, d: Path):
    """`obj` with every string "@name" replaced by the path tmp/name."""
    if isinstance(obj, dict):
        return {k: at_paths(v, d) for k, v in obj.items()}
    if isinstance(obj, str) and obj.startswith("@"):
        return str(d / obj[1:])
    return obj


def then(*steps: Callable[[Path], object]):
    """A builder running `steps` in order on tmp; the last one returns the CLI arguments."""

    def build(d: Path) -> list[str]:
        out: object = None
        for step in steps:
            out = step(d)
        assert isinstance(out, list)
        return out

    return build


def write(name: str, content: bytes | str | Callable[[Path], object]):
    """A step writing tmp/name: bytes or text, or `content(path)` writes it."""

    def step(d: Path) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)

    return step


# --------------------------------------------------------------------------------------------
# embedding caches, through `facekd density` (and a teacher cache through `facekd train`)


def cache_dir(d: Path, **meta) -> Path:
    """A complete 6 × 4 cache at tmp/cache, written the way EmbeddingCache.open reads it."""
    c = d / "cache"
    c.mkdir(exist_ok=True)
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    np.save(c / "embeddings.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
    np.save(c / "labels.npy", np.array([0, 0, 1, 1, 2, 2], dtype=np.int64))
    (c / "meta.json").write_text(json.dumps({"complete": True, "n": 6, "embedding_size": 4, **meta}))
    return c


def cache(edit: Callable[[Path], object] | None = None, *options: str, **meta):
    """`facekd density tmp/cache` on a cache that `edit(cache)` damaged (options may hold @names)."""

    def build(d: Path) -> list[str]:
        c = cache_dir(d, **meta)
        if edit is not None:
            edit(c)
        extra = [str(d / o[1:]) if o.startswith("@") else o for o in options]
        return ["density", str(c), "--out", str(d / "out" / "density.npy"), *extra]

    return build


def npy_bytes(array: np.ndarray, cut: int = 0) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()[: len(buf.getvalue()) - cut]


def set_row(row: int, value: float):
    def edit(c: Path) -> None:
        x = np.load(c / "embeddings.npy")
        x[row] = value
        np.save(c / "embeddings.npy", x)

    return edit


# --------------------------------------------------------------------------------------------
# checkpoints, through `facekd export`, `embed`, `eval --bin` and a teacher head in `facekd train`


class RunsCode:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def state_dict(change: dict[str, Callable] | None = None) -> dict:
    """The module checkpoint's state_dict (mbf_tiny, 8-d), its tensors `name` replaced by `fn(tensor)`."""
    import torch

    sd = torch.load(CHECKPOINT, weights_only=True)
    for key, fn in (change or {}).items():
        sd[key] = fn(sd[key])
    return sd


def torch_file(obj_fn: Callable[[], object]):
    def save(path: Path) -> None:
        import torch

        torch.save(obj_fn(), path)

    return save


def checkpoint_bytes(cut: bool = False) -> bytes:
    """The module checkpoint's bytes, or their first half."""
    data = CHECKPOINT.read_bytes()
    return data[: len(data) // 2] if cut else data


def export(ckpt: Callable[[Path], object] | bytes, arch: str = "mbf_tiny"):
    def build(d: Path) -> list[str]:
        write("ckpt.pth", ckpt)(d)
        return ["export", str(d / "ckpt.pth"), "--arch", arch, "--out", str(d / "out" / "m.onnx")]

    return build


def embed_args(d: Path, checkpoint: Path, out: Path, n: int = 16) -> list[str]:
    """`facekd embed` of `n` images (tmp/data.npz) with `checkpoint` into `out`."""
    model = ["--arch", "mbf_tiny", "--checkpoint", str(checkpoint)]
    data = ["--kind", "arrays", "--data", str(arrays_data(d, n))]
    return ["embed", *model, *data, "--out", str(out), "--no-progress"]


def embed_with(ckpt: Callable[[Path], object] | bytes):
    def build(d: Path) -> list[str]:
        write("ckpt.pth", ckpt)(d)
        return embed_args(d, d / "ckpt.pth", d / "cache")

    return build


def online_teacher(head: str) -> dict:
    return {"checkpoint": str(CHECKPOINT), "arch": "mbf_tiny", "head": head, "online": True}


def eval_bin_with(ckpt: Callable[[Path], object] | bytes, pairs: int = 2):
    """`facekd eval --bin tmp/x.bin` (a valid set of `pairs` pairs) with the checkpoint tmp/ckpt.pth."""

    def build(d: Path) -> list[str]:
        write_bin([jpeg(k) for k in range(2 * pairs)], [k % 2 == 0 for k in range(pairs)], d / "x.bin")
        write("ckpt.pth", ckpt)(d)
        return ["eval", "--arch", "mbf_tiny", "--checkpoint", str(d / "ckpt.pth"), "--bin", str(d / "x.bin")]

    return build


def nan_weights(t):
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


# --------------------------------------------------------------------------------------------
# run directories, through `facekd train` (resume) and `facekd embed`


def in_run(name: str, content: bytes | str | Callable[[Path], object]):
    return write(f"run/{name}", content)


def damaged_cache_out(name: str, content: bytes | str):
    """`facekd embed` into tmp/cache holding an interrupted run whose file `name` is damaged."""

    def build(d: Path) -> list[str]:
        c = d / "cache"
        c.mkdir()
        (c / ".part0of1.npy").write_bytes(npy_bytes(np.zeros((16, 8), np.float32)))
        (c / ".progress0of1.json").write_text(json.dumps({"done": 8}))
        (c / name).write_bytes(content.encode() if isinstance(content, str) else content)
        return embed_args(d, CHECKPOINT, c)

    return build


# --------------------------------------------------------------------------------------------
# IJB-C meta, through `facekd eval-ijb --features`

IJB_FILES = {
    "tid_mid": "ijbc_face_tid_mid.txt",
    "pairs": "ijbc_template_pair_label.txt",
    "5pts": "ijbc_name_5pts_score.txt",
}


def ijb(edit: dict[str, bytes | str | None] | None = None, rows: int = 4, features: bytes | None = None):
    """A 4-image IJB-C release (2 templates) at tmp/ijb with meta files replaced by `edit`
    (None: removed), and its features at tmp/f.npy."""

    def build(d: Path) -> list[str]:
        meta = d / "ijb" / "meta"
        meta.mkdir(parents=True)
        names = [f"{i}.jpg" for i in range(4)]
        files = {
            "tid_mid": "".join(f"{n} {1 + i // 2} {1 + i // 2}\n" for i, n in enumerate(names)),
            "pairs": "1 2 0\n1 1 1\n",
            "5pts": "".join(f"{n} " + " ".join(["30.0"] * 10) + " 0.9\n" for n in names),
            **(edit or {}),
        }
        for key, content in files.items():
            if content is not None:
                (meta / IJB_FILES[key]).write_bytes(content.encode() if isinstance(content, str) else content)
        feats = np.random.default_rng(2).normal(size=(rows, 8)).astype(np.float32)
        (d / "f.npy").write_bytes(features if features is not None else npy_bytes(feats))
        return ["eval-ijb", "--features", str(d / "f.npy"), "--meta", str(d / "ijb"), "--out", str(d / "out")]

    return build


# --------------------------------------------------------------------------------------------
# output locations (a directory where a file belongs, a file where a directory belongs, a
# read-only or a full filesystem)


def density_to(out: str, prepare: tuple[str, ...] = ()):
    """`facekd density` of a valid cache with --out tmp/<out>; `prepare` makes these folders first."""

    def build(d: Path) -> list[str]:
        for folder in prepare:
            (d / folder).mkdir(parents=True, exist_ok=True)
        return ["density", str(cache_dir(d)), "--out", str(d / out)]

    return build


def export_to(out: str, prepare: tuple[str, ...] = ()):
    def build(d: Path) -> list[str]:
        for folder in prepare:
            (d / folder).mkdir(parents=True, exist_ok=True)
        return ["export", str(CHECKPOINT), "--arch", "mbf_tiny", "--out", str(d / out)]

    return build


def a_file(name: str):
    return write(name, "not a folder\n")


def pack_to(out: str):
    def build(d: Path) -> list[str]:
        return ["pack-rec", str(folder(d)), f"{d / out}/"]

    return build


FIRST = "layers.0.layers.0.weight"  # the first convolution of mbf_tiny
CACHED = {"cache": "@cache"}  # the teacher block of a run on the cache at tmp/cache

CASES += [
    # YAML run configs
    Case("cfg-invalid-yaml", config("train: {epochs: 1\n"), "run.yaml", ("invalid YAML",)),
    Case("cfg-top-level-list", config("- train\n- model\n"), "run.yaml", ("expected a mapping",)),
    Case("cfg-not-utf8", config(b"run_dir: r\xff\n"), "run.yaml", ("UTF-8",)),
    Case(
        "cfg-python-tag",
        config("run_dir: !!python/object/apply:os.system ['echo pwned']\n"),
        "run.yaml",
        ("invalid YAML", "python/object"),
    ),
    Case("cfg-unknown-key", config(train={"lrr": 1}), "run.yaml", ("train.lrr", "unknown key")),
    Case("cfg-epochs-text", config(train={"epochs": "ten"}), "run.yaml", ("train.epochs",)),
    Case("cfg-epochs-zero", config(train={"epochs": 0}), "run.yaml", ("train.epochs", "greater than or equal to 1")),
    Case("cfg-data-kind", config(data={"kind": "tfrecord"}), "run.yaml", ("data", "tfrecord")),
    Case("cfg-override-no-value", config(overrides=("train.lr",)), "train.lr", ("key=value",), relative=True),
    Case("cfg-override-unknown", config(overrides=("train.lrr=1",)), "run.yaml", ("train.lrr",)),
    Case(
        "cfg-milestones-decreasing",
        config(train={"schedule": "step", "milestones": [2, 1]}),
        "run.yaml",
        ("milestones must be increasing",),
    ),
    Case("cfg-teacher-cache-missing", config(teacher={"cache": "@nocache"}), "nocache", ("does not exist",)),
    Case("opt-bandwidth-720deg", cache(None, "--bandwidth", "720deg"), "720deg", ("(0°, 180°]",), relative=True),
    # embedding caches
    Case("cache-meta-array", cache(write("meta.json", "[]")), "cache/meta.json", ("expected a JSON object", "array")),
    Case("cache-meta-invalid", cache(write("meta.json", '{"n": 6,')), "cache/meta.json", ("invalid JSON",)),
    Case("cache-meta-not-utf8", cache(write("meta.json", b'{"n": "\xff"}')), "cache/meta.json", ("not UTF-8",)),
    Case("cache-meta-incomplete", cache(complete=False), "cache/meta.json", ("incomplete",)),
    Case("cache-meta-n-text", cache(n="6"), "cache/meta.json", ("'n' must be a non-negative integer",)),
    Case("cache-no-meta", cache(lambda c: (c / "meta.json").unlink()), "cache", ("not an embedding cache",)),
    Case(
        "cache-embeddings-text",
        cache(write("embeddings.npy", "0.1 0.2 0.3\n")),
        "cache/embeddings.npy",
        ("not a NumPy .npy array file",),
    ),
    Case(
        "cache-embeddings-objects",
        cache(write("embeddings.npy", npy_bytes(np.array([{"x": 1}] * 6, dtype=object)))),
        "cache/embeddings.npy",
        ("holds Python objects",),
    ),
    Case(
        "cache-embeddings-truncated",
        cache(write("embeddings.npy", npy_bytes(np.zeros((6, 4), np.float32), cut=8))),
        "cache/embeddings.npy",
        ("truncated",),
    ),
    Case(
        "cache-embeddings-float64",
        cache(write("embeddings.npy", npy_bytes(np.ones((6, 4))))),
        "cache/embeddings.npy",
        ("float64", "meta.json says float32"),
    ),
    Case(
        "cache-embeddings-rows",
        cache(write("embeddings.npy", npy_bytes(np.ones((5, 4), np.float32)))),
        "cache/embeddings.npy",
        ("(5, 4)", "(6, 4)"),
    ),
    Case("cache-labels-missing", cache(lambda c: (c / "labels.npy").unlink()), "cache", ("labels.npy",)),
    Case(
        "cache-labels-float",
        cache(write("labels.npy", npy_bytes(np.zeros(6)))),
        "cache/labels.npy",
        ("meta.json says integer",),
    ),
    Case("cache-embeddings-nan", cache(set_row(2, float("nan"))), "cache/embeddings.npy", ("row 2", "NaN")),
    Case("cache-embeddings-zero", cache(set_row(4, 0.0)), "cache/embeddings.npy", ("row 4", "zero")),
    Case(
        "cache-list-text",
        cache(lambda c: (c.parent / "list.npy").write_text("0 1 2\n"), "--list", "@list.npy"),
        "list.npy",
        ("not a NumPy .npy array file",),
    ),
    Case(
        "cache-list-range",
        cache(lambda c: np.save(c.parent / "list.npy", np.array([0, 9])), "--list", "@list.npy"),
        "list.npy",
        ("[0, 6)",),
    ),
    Case(
        "cache-teacher-meta-array",
        then(lambda d: (cache_dir(d) / "meta.json").write_text("[]"), config(teacher=CACHED)),
        "cache/meta.json",
        ("expected a JSON object",),
    ),
    # checkpoints
    Case("ckpt-truncated", export(lambda p: p.write_bytes(checkpoint_bytes(cut=1))), "ckpt.pth", ("truncated",)),
    Case("ckpt-garbage", export(b"not a checkpoint\n" * 4), "ckpt.pth", ("not a torch.save checkpoint",)),
    Case("ckpt-empty", export(b""), "ckpt.pth", ("truncated",)),
    Case(
        "ckpt-runs-code",
        export(lambda p: p.write_bytes(pickle.dumps(RunsCode(), protocol=2))),
        "ckpt.pth",
        ("refused to load", "system"),
    ),
    Case(
        "ckpt-pickled-module",
        export(torch_file(lambda: __import__("torch").nn.Linear(2, 2))),
        "ckpt.pth",
        ("refused to load", "GLOBAL torch.nn.modules.linear.Linear"),
    ),
    Case("ckpt-a-tensor", export(torch_file(lambda: __import__("torch").zeros(3))), "ckpt.pth", ("no backbone",)),
    Case("ckpt-other-arch", export(torch_file(state_dict), "iresnet_mini"), "ckpt.pth", ("no key matches",)),
    Case(
        "ckpt-shape",
        export(torch_file(lambda: state_dict({FIRST: lambda t: t[:, :, :2]}))),
        "ckpt.pth",
        ("shape mismatch", FIRST),
    ),
    Case("ckpt-folder-without-weights", export(lambda p: p.mkdir()), "ckpt.pth", ("none of backbone.pth, model.pt",)),
    Case(
        "ckpt-path-is-an-arch-name",
        lambda d: ["export", "mbf_tiny", "--arch", "mbf_tiny", "--out", str(d / "out" / "m.onnx")],
        "mbf_tiny",
        ("does not exist", "--random-weights"),
        relative=True,
    ),
    Case(
        "ckpt-nan-weights-embed",
        embed_with(torch_file(lambda: state_dict({FIRST: nan_weights}))),
        "ckpt.pth",
        (FIRST, "NaN"),
    ),
    Case(
        "ckpt-nan-weights-eval",
        eval_bin_with(torch_file(lambda: state_dict({FIRST: nan_weights}))),
        "ckpt.pth",
        (FIRST, "NaN"),
    ),
    Case(
        "ckpt-truncated-eval",
        eval_bin_with(lambda p: p.write_bytes(checkpoint_bytes(cut=1))),
        "ckpt.pth",
        ("truncated",),
    ),
    Case(
        "ckpt-teacher-head-truncated",
        then(write("head.pth", b"PK\x03\x04 cut short"), lambda d: config(teacher=online_teacher("@head.pth"))(d)),
        "head.pth",
        ("teacher head", "truncated"),
    ),
]

CASES += [
    # run directories
    Case(
        "run-last-pt-truncated",
        then(in_run("checkpoints/last.pt", lambda p: p.write_bytes(checkpoint_bytes(cut=True))), config()),
        "run/checkpoints/last.pt",
        ("training checkpoint", "truncated"),
    ),
    Case(
        "run-last-pt-a-state-dict",
        then(in_run("checkpoints/last.pt", lambda p: p.write_bytes(checkpoint_bytes())), config()),
        "run/checkpoints/last.pt",
        ("not a facekd training checkpoint",),
    ),
    Case(
        "run-last-pt-a-tensor",
        then(in_run("checkpoints/last.pt", torch_file(lambda: __import__("torch").zeros(2))), config()),
        "run/checkpoints/last.pt",
        ("not a facekd training checkpoint",),
    ),
    Case(
        "run-last-pt-runs-code",
        then(in_run("checkpoints/last.pt", pickle.dumps(RunsCode(), protocol=2)), config()),
        "run/checkpoints/last.pt",
        ("refused to load",),
    ),
    Case("run-json-array", then(in_run("run.json", "[]"), config()), "run/run.json", ("expected a JSON object",)),
    Case("run-json-invalid", then(in_run("run.json", '{"record": '), config()), "run/run.json", ("invalid JSON",)),
    Case(
        "run-json-record-text",
        then(in_run("run.json", '{"key": "k", "record": "text"}'), config()),
        "run/run.json",
        ("'record' object",),
    ),
    Case(
        "run-done-without-checkpoint",
        then(in_run("done", "{}"), config()),
        "run/checkpoints/last.pt",
        ("does not exist",),
    ),
    Case("run-dir-is-a-file", then(a_file("run"), config()), "run", ("is a file, expected a directory",)),
    Case(
        "run-dir-under-a-file",
        then(a_file("afile"), config(run_dir="@afile/run")),
        "afile",
        ("is a file, expected a directory",),
    ),
    Case(
        "embed-progress-array",
        damaged_cache_out(".progress0of1.json", "[]"),
        "cache/.progress0of1.json",
        ("expected a JSON object",),
    ),
    Case(
        "embed-progress-done-text",
        damaged_cache_out(".progress0of1.json", '{"done": "8"}'),
        "cache/.progress0of1.json",
        ("'done' must be a non-negative integer",),
    ),
    Case(
        "embed-into-another-cache",
        lambda d: embed_args(d, CHECKPOINT, cache_dir(d)),
        "cache",
        ("holds a different result", "n: saved 6, now 16"),
    ),
    Case("embed-out-is-a-file", lambda d: embed_args(d, CHECKPOINT, d / "data.npz"), "data.npz", ("is a file",)),
    # IJB-C meta
    Case(
        "ijb-template-id-text",
        ijb({"tid_mid": "0.jpg one 1\n"}),
        "ijb/meta/ijbc_face_tid_mid.txt",
        (":1:", "must be integers"),
    ),
    Case("ijb-label-2", ijb({"pairs": "1 2 2\n"}), "ijb/meta/ijbc_template_pair_label.txt", ("is not 0 or 1",)),
    Case("ijb-unknown-template", ijb({"pairs": "1 9 0\n"}), "ijb/meta/ijbc_template_pair_label.txt", ("[9]",)),
    Case("ijb-pairs-text", ijb({"pairs": "1 two 0\n"}), "ijb/meta/ijbc_template_pair_label.txt", ("three integers",)),
    Case("ijb-pairs-missing", ijb({"pairs": None}), "ijb/meta/ijbc_template_pair_label.txt", ("does not exist",)),
    Case(
        "ijb-score-text",
        ijb({"5pts": "0.jpg " + "x " * 10 + "0.9\n"}),
        "ijb/meta/ijbc_name_5pts_score.txt",
        ("must be numbers",),
    ),
    Case(
        "ijb-5pts-fields", ijb({"5pts": "0.jpg 1 2 3\n"}), "ijb/meta/ijbc_name_5pts_score.txt", ("expected 12 fields",)
    ),
    Case(
        "ijb-image-outside",
        ijb({"tid_mid": "../0.jpg 1 1\n"}),
        "ijb/meta/ijbc_face_tid_mid.txt",
        ("points outside loose_crop",),
    ),
    Case("ijb-not-utf8", ijb({"tid_mid": b"0.jpg 1 1\n\xff.jpg 1 1\n"}), "ijb/meta/ijbc_face_tid_mid.txt", ("UTF-8",)),
    Case("ijb-feature-rows", ijb(rows=3), "f.npy", ("3 rows", "4 images")),
    Case("ijb-features-text", ijb(features=b"0.1 0.2\n"), "f.npy", ("not a NumPy .npy array file",)),
    # output locations
    Case("out-density-is-a-folder", density_to("outdir", ("outdir",)), "outdir", ("is a directory",)),
    Case("out-density-under-a-file", then(a_file("afile"), density_to("afile/d.npy")), "afile", ("is a file",)),
    Case("out-export-is-a-folder", export_to("outdir", ("outdir",)), "outdir", ("is a directory",)),
    Case(
        "out-eval-under-a-file",
        then(a_file("afile"), lambda d: [*eval_bin_with(checkpoint_bytes(), pairs=20)(d), "--out", str(d / "afile")]),
        "afile",
        ("is a file",),
    ),
    Case("out-pack-under-a-file", then(a_file("afile"), pack_to("afile/out")), "afile", ("is a file",)),
    Case("fs-ro-density", density_to("fs/x/d.npy", ("fs/x",)), "fs/x", ("read-only file system",), fs="ro"),
    Case("fs-ro-export", export_to("fs/m.onnx"), "fs/m.onnx", ("read-only file system",), fs="ro"),
    Case("fs-ro-train", config(run_dir="@fs/run"), "fs/run", ("read-only file system",), fs="ro"),
    Case("fs-ro-embed", lambda d: embed_args(d, CHECKPOINT, d / "fs" / "cache"), "fs/cache", ("read-only",), fs="ro"),
    Case("fs-ro-pack", pack_to("fs/out"), "fs/out", ("read-only file system",), fs="ro"),
    Case(
        "fs-full-train",
        config(run_dir="@fs/run"),
        "fs/run/checkpoints/last.pt",
        ("disk full",),
        fs="full",
        free=64 << 10,
        new_files="fs/run/",
    ),
    Case("fs-full-export", export_to("fs/m.onnx"), "fs/m.onnx", ("disk full",), fs="full", free=16 << 10),
    Case("fs-full-pack", pack_to("fs/out"), "fs/out/train.rec", ("disk full",), fs="full", free=4 << 10),
    Case(  # room for the lock file and 2 of the 3 pages of rows: a memory-mapped sparse file dies of SIGBUS here
        "fs-full-embed",
        lambda d: embed_args(d, CHECKPOINT, d / "fs" / "cache", n=256),
        "fs/cache",
        ("disk full", "needs"),
        fs="full",
        free=12 << 10,
    ),
    Case("fs-full-density", density_to("fs/d.npy"), "fs/d.npy", ("disk full",), fs="full"),
    # an error inside a DataLoader worker
    Case(
        "worker-truncated-image",
        then(
            lambda d: folder(d, extra={"bob/2.jpg": jpeg(9)[:200]}),
            config(data={"kind": "folder", "path": "@faces"}, train={"batch_size": 2, "num_workers": 1}),
        ),
        "faces/bob/2.jpg",
        ("decode",),
    ),
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


def mount_refusal() -> str | None:
    """None when a tmpfs can be mounted here, else why not (the read-only / full cases are skipped)."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs (mount -t tmpfs)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount(8) / umount(8) not found"
    return None


@contextlib.contextmanager
def small_fs(where: Path, size: int = 1 << 20) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `where` for the block (skips the test if it cannot be)."""
    why = mount_refusal()
    if why:
        pytest.skip(why)
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def seal(case: Case, where: Path) -> None:
    """Make the case's filesystem read-only, or fill it until `case.free` bytes are left."""
    if case.fs == "ro":
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
        return
    st = os.statvfs(where)
    fill = st.f_bavail * st.f_frsize - case.free
    if fill > 0:
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            os.posix_fallocate(fd, 0, fill)
        finally:
            os.close(fd)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2(case: Case, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACEKD_DEBUG", raising=False)
    with contextlib.ExitStack() as stack:
        if case.fs is not None:
            stack.enter_context(small_fs(tmp_path / "fs"))
        args = case.build(tmp_path)
        if case.fs is not None:
            seal(case, tmp_path / "fs")
        before = snapshot(tmp_path)
        code, err = run_cli(args, capsys)
        after = snapshot(tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "allow_pickle" not in err
    assert case.file in lines[0] and (case.relative or str(tmp_path) in lines[0]), lines[0]
    for text in case.expect:
        assert text in lines[0], lines[0]
    assert {k: v for k, v in after.items() if k in before} == before  # no existing file changed
    assert not [k for k in after if k not in before and not k.startswith(case.new_files)]  # nothing new elsewhere


@pytest.mark.slow
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
