"""InsightFace / MXNet RecordIO (`train.rec` + `train.idx` + `property`) without mxnet.

Format (dmlc-core `recordio.h` / `recordio.cc`, mxnet `recordio.py`, arcface_torch `dataset.py`):

* `train.idx`: text, one `key<TAB>byte_offset` line per record.
* `train.rec`: records of `uint32 magic = 0xCED7230A`, `uint32 lrecord` (cflag = lrecord >> 29 & 7,
  length = lrecord & (2^29 - 1)), `length` payload bytes, zero padding to 4 bytes. A payload that
  holds the magic word at a 4-aligned offset is split there into parts with cflag 1 (start),
  2 (middle), 3 (end); the reader joins the parts and re-inserts the 4 magic bytes between them.
  cflag 0 is a complete record.
* payload: `'<IfQQ'` header (flag uint32, label float32, id uint64, id2 uint64; 24 bytes), then
  `flag` float32 labels when flag > 0 (the header label is then ignored), then the image (JPEG).
* record 0 with flag > 0 and label [A, B]: images are keys 1..A-1, keys A..B-1 are per-identity
  records (label [first key, end key)), num_classes = B - A. Otherwise every key is an image
  (im2rec output, arcface_torch `shuffle_rec.py` output).
* `property`: `num_classes,height,width` (first line), optionally the image count (second line).
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.data.augment import Augmentation
from facekd.data.folder import EncodedImageDataset
from facekd.data.images import MAX_IMAGE_PIXELS, encode_jpeg, image_size, verify_image
from facekd.utils import atomic_path

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LEGACY_MAGIC = 0x3ED7230A  # dmlc-core before 2015: 30-bit length, cflag << 30; not used by InsightFace data
LENGTH_MASK = (1 << 29) - 1
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
FLOAT32_EXACT = 1 << 24  # largest range of integers a float32 label holds exactly
_INT63 = 1 << 63


class RecordIOError(ValueError):
    """A malformed record; the message names the file, the key and the byte offset."""

    def __init__(self, path, key, offset, what: str):
        self.path, self.key, self.offset = str(path), key, offset
        super().__init__(f"{path}: key {key} at byte offset {offset}: {what}")


@dataclass
class IRHeader:
    """The image-record header of mxnet `recordio.pack`: labels is float32 (flag,) or (1,) when flag == 0."""

    flag: int
    labels: np.ndarray
    id: int
    id2: int


def unpack_payload(payload: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record payload into its IRHeader and the encoded image bytes that follow."""
    if len(payload) < IR_SIZE:
        raise ValueError(f"{where}: payload of {len(payload)} bytes is shorter than the {IR_SIZE}-byte IRHeader")
    flag, label, id1, id2 = struct.unpack_from(IR_FORMAT, payload)
    if flag > 0:
        end = IR_SIZE + 4 * flag
        if end > len(payload):
            raise ValueError(
                f"{where}: IRHeader flag={flag} announces {flag} float32 labels, "
                f"but the payload has only {len(payload) - IR_SIZE} bytes after the header"
            )
        labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
        return IRHeader(flag, labels, id1, id2), payload[end:]
    return IRHeader(0, np.array([label], dtype=np.float32), id1, id2), payload[IR_SIZE:]


def pack_payload(label: float | Sequence[float], image: bytes = b"", id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + labels + image bytes, as mxnet `recordio.pack`: a scalar label gives flag 0."""
    array = np.asarray(label, dtype="<f4")
    if array.ndim == 0:
        return struct.pack(IR_FORMAT, 0, float(array), id, id2) + image
    labels = array.ravel()
    return struct.pack(IR_FORMAT, labels.size, 0.0, id, id2) + labels.tobytes() + image


def frame_record(payload: bytes) -> bytes:
    """dmlc-core framing of one payload: split at 4-aligned magic words (cflag 1/2/3), pad to 4 bytes."""
    if len(payload) > LENGTH_MASK:
        raise ValueError(f"record payload of {len(payload)} bytes exceeds the RecordIO limit of 2^29 - 1")
    aligned = np.frombuffer(payload, dtype="<u4", count=len(payload) // 4)
    splits = (np.flatnonzero(aligned == MAGIC) * 4).tolist()
    out, start = [], 0
    for pos in splits:
        out += [MAGIC_BYTES, struct.pack("<I", ((1 if start == 0 else 2) << 29) | (pos - start)), payload[start:pos]]
        start = pos + 4
    out += [MAGIC_BYTES, struct.pack("<I", ((3 if splits else 0) << 29) | (len(payload) - start)), payload[start:]]
    out.append(b"\0" * (-len(payload) % 4))
    return b"".join(out)


def read_idx(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`train.idx` → (keys int64 (N,), offsets int64 (N,)) in file order. Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RecordIO index {path} does not exist")
    keys, offsets = [], []
    with open(path, encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                key, off = int(fields[0]), int(fields[1])
                if not (0 <= key < _INT63 and 0 <= off < _INT63):
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: expected 'key<TAB>offset' with two integers in [0, 2^63), "
                    f"got {line.rstrip()[:80]!r}"
                ) from None
            keys.append(key)
            offsets.append(off)
    if not keys:
        raise ValueError(f"RecordIO index {path} is empty")
    keys_a = np.asarray(keys, dtype=np.int64)
    uniq, counts = np.unique(keys_a, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{path}: key {int(uniq[counts > 1][0])} appears more than once")
    return keys_a, np.asarray(offsets, dtype=np.int64)


def read_property(path: str | os.PathLike) -> tuple[int, int, int, int | None]:
    """`property` → (num_classes, height, width, num_images or None)."""
    path = Path(path)
    raw = path.read_bytes()
    expected = "expected 'num_classes,height,width' (and optionally the image count on a second line)"
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {expected}, got non-ASCII byte {raw[e.start]:#04x} at byte {e.start}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    try:
        c, h, w = (int(v) for v in lines[0].split(","))
        n = int(lines[1]) if len(lines) > 1 else None
    except (ValueError, IndexError):
        raise ValueError(f"{path}: {expected}, got {[ln[:40] for ln in lines[:2]]!r}") from None
    if c < 1 or h < 1 or w < 1 or h * w > MAX_IMAGE_PIXELS or (n is not None and n < 0):
        raise ValueError(f"{path}: {expected} with positive sizes of a sane image, got {c},{h},{w} / {n}")
    return c, h, w, n


def resolve_paths(prefix: str | os.PathLike | None = None, rec=None, idx=None) -> tuple[Path, Path, Path]:
    """(rec, idx, property) from a prefix: a folder (→ folder/train.*) or a path stem (→ stem.rec, stem.idx)."""
    if prefix is not None:
        p = Path(prefix)
        if p.is_dir():
            rec, idx, prop = p / "train.rec", p / "train.idx", p / "property"
        else:
            if p.suffix in (".rec", ".idx"):
                p = p.with_suffix("")
            rec, idx, prop = p.with_suffix(".rec"), p.with_suffix(".idx"), p.parent / "property"
    elif rec is not None:
        rec = Path(rec)
        idx = Path(idx) if idx is not None else rec.with_suffix(".idx")
        prop = rec.parent / "property"
    else:
        raise ValueError("give a prefix (folder or path stem) or rec= (and idx=)")
    for f in (rec, idx):
        if not Path(f).is_file():
            raise FileNotFoundError(f"RecordIO file {f} does not exist")
    return Path(rec), Path(idx), Path(prop)


class RecordIOReader:
    """Random access to the records of a `.rec` file by offset; one OS file handle per process.

    The handle opens lazily and is re-opened after a fork (pid check), so a reader inside a
    Dataset works with DataLoader workers; pickling drops the handle.
    """

    def __init__(self, rec: str | os.PathLike):
        self.path = Path(rec)
        self.size = self.path.stat().st_size
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read(self, offset: int, key="?") -> bytes:
        """The payload of the record starting at `offset` (multi-part records re-joined)."""
        return self.read_extent(offset, key)[0]

    def read_extent(self, offset: int, key="?") -> tuple[bytes, int]:
        """(payload, end): the record at `offset` and the byte just after its last part (padded)."""
        fd, pos = self._handle(), int(offset)
        parts: list[bytes] = []
        while True:
            head = os.pread(fd, 8, pos) if 0 <= pos < self.size else b""
            if len(head) < 8:
                raise RecordIOError(
                    self.path,
                    key,
                    pos,
                    f"truncated record: expected an 8-byte record head, "
                    f"found {len(head)} bytes before the end of the file",
                )
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOError(self.path, key, pos, _bad_magic(magic))
            cflag, length = (lrec >> 29) & 7, lrec & LENGTH_MASK
            if cflag > 3:
                raise RecordIOError(
                    self.path, key, pos, f"cflag {cflag} in lrecord, expected 0 (whole) or 1/2/3 (part)"
                )
            if (cflag in (2, 3)) != bool(parts):
                what = (
                    f"continuation part (cflag {cflag}) without a start part"
                    if not parts
                    else f"new record (cflag {cflag}) inside a multi-part record"
                )
                raise RecordIOError(self.path, key, pos, what)
            if pos + 8 + length > self.size:
                raise RecordIOError(
                    self.path,
                    key,
                    pos,
                    f"truncated record: lrecord announces {length} bytes, "
                    f"only {self.size - pos - 8} remain in the file",
                )
            parts.append(os.pread(fd, length, pos + 8))
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts), pos


def _bad_magic(magic: int) -> str:
    if magic == LEGACY_MAGIC:
        return (
            "magic 0x3ED7230A of the pre-2015 dmlc RecordIO format; InsightFace data uses 0xCED7230A — "
            "re-pack the file with a current im2rec"
        )
    return f"bad magic 0x{magic:08X}, expected 0xCED7230A (not a RecordIO record, or a wrong offset in the .idx)"


@dataclass
class RecordHeads:
    """What the heads of indexed records say, one entry per `.idx` row (arrays of shape (N,)).

    flag: IRHeader flag; label: the class label (the scalar header label, or the first of a label
    vector) as float64; label2: the second label of a vector (NaN when there is none); end: the
    byte after the record's last part, padding included (-1 when unknown); errors: row →
    RecordIOError for records whose framing or header is malformed.
    """

    flag: np.ndarray
    label: np.ndarray
    label2: np.ndarray
    end: np.ndarray
    errors: dict[int, ValueError]


def _word_map(rec: RecordIOReader) -> np.ndarray:
    """The `.rec` file as little-endian uint32 words (a read-only memory map)."""
    try:
        size = os.stat(rec.path).st_size
        if size != rec.size:
            raise OSError(f"the file changed size while being read ({rec.size} then {size} bytes)")
        return np.memmap(rec.path, dtype="<u4", mode="r", shape=(size // 4,))
    except (OSError, ValueError) as e:
        raise RecordIOError(rec.path, "-", 0, f"cannot map the file for reading: {e}") from None


def scan_heads(rec: RecordIOReader, keys: np.ndarray, offsets: np.ndarray, chunk: int = 1 << 20) -> RecordHeads:
    """Read the head of every record at `offsets` without reading image bytes.

    Vectorised over a uint32 memory map of the `.rec` file: the magic, lrecord, flag, scalar label
    and the first two vector labels of each record; a multi-part record (cflag 1) is read whole.
    """
    n = len(keys)
    out = RecordHeads(
        np.zeros(n, np.int64), np.full(n, np.nan), np.full(n, np.nan), np.full(n, -1, np.int64), errors={}
    )
    if rec.size < 8:
        out.errors = {
            i: RecordIOError(rec.path, int(keys[i]), int(offsets[i]), "the .rec file is empty") for i in range(n)
        }
        return out
    mm = _word_map(rec)
    for s in range(0, n, chunk):
        _scan_chunk(rec, mm, keys[s : s + chunk], offsets[s : s + chunk], s, out)
    del mm
    return out


_HEAD_PROBLEMS = (
    "",
    "offset is not 4-byte aligned (RecordIO records start on 4-byte boundaries)",
    "truncated record: offset + 8-byte head lies past the end of the file",
    "bad magic",
    "cflag above 3 in lrecord (expected 0 for a whole record, 1 for a first part)",
    "record starts with a continuation part (cflag 2/3)",
    "truncated record: payload runs past the end of the file",
    "payload shorter than its IRHeader and labels",
)


def _scan_chunk(rec: RecordIOReader, mm: np.ndarray, keys: np.ndarray, off: np.ndarray, s: int, out: RecordHeads):
    last = mm.shape[0] - 1
    base = off // 4

    def word(k: int | np.ndarray, at: np.ndarray | slice = slice(None)) -> np.ndarray:
        return mm[np.minimum(base[at] + k, last)].astype(np.int64)

    problem = np.zeros(len(off), dtype=np.int8)  # an index into _HEAD_PROBLEMS; the first one found wins

    def flag_rows(mask: np.ndarray, code: int) -> None:
        problem[(problem == 0) & mask] = code

    flag_rows(off + 8 > rec.size, 2)
    flag_rows(off % 4 != 0, 1)
    magic, lrec = word(0), word(1)
    flag_rows(magic != MAGIC, 3)
    cflag, length = (lrec >> 29) & 7, lrec & LENGTH_MASK
    flag_rows(cflag > 3, 4)
    flag_rows((cflag == 2) | (cflag == 3), 5)
    flag_rows((cflag == 0) & (off + 8 + length > rec.size), 6)
    flag = word(2)
    nlab = np.where(flag > 0, np.minimum(flag, 2), 0)
    flag_rows((cflag == 0) & (length < IR_SIZE + 4 * nlab), 7)
    rows = np.flatnonzero((problem == 0) & (cflag == 0))
    out.flag[s + rows] = flag[rows]
    f32 = lambda w: w.astype(np.uint32).view(np.float32).astype(np.float64)  # noqa: E731
    out.label[s + rows] = f32(word(np.where(flag[rows] > 0, 8, 3), rows))  # the first vector label, or the scalar
    pairs = rows[flag[rows] > 1]
    out.label2[s + pairs] = f32(word(9, pairs))
    out.end[s + rows] = (off + 8 + length + (-length % 4))[rows]
    for r in np.flatnonzero((problem == 0) & (cflag == 1)):  # multi-part: read it whole
        where = f"{rec.path}: key {int(keys[r])} at byte offset {int(off[r])}"
        try:
            payload, end = rec.read_extent(int(off[r]), int(keys[r]))
            header, _ = unpack_payload(payload, where)
        except ValueError as e:
            out.errors[s + int(r)] = e
            continue
        out.flag[s + r], out.label[s + r], out.end[s + r] = header.flag, float(header.labels[0]), end
        out.label2[s + r] = float(header.labels[1]) if header.labels.size > 1 else np.nan
    for r in np.flatnonzero(problem):
        what = _bad_magic(int(magic[r])) if problem[r] == 3 else _HEAD_PROBLEMS[problem[r]]
        out.errors[s + int(r)] = RecordIOError(rec.path, int(keys[r]), int(off[r]), what)


def class_labels(heads: RecordHeads, rows: np.ndarray, path, keys, offsets) -> tuple[np.ndarray, dict[int, ValueError]]:
    """Class ids (int64) of the image records at `rows` of `heads`, and errors row → RecordIOError
    for the records whose head is malformed or whose label is not a class id (NaN, inf, negative,
    fractional, or >= 2^24, beyond which float32 labels are not exact); their label is -1."""
    bad_heads = np.fromiter(heads.errors, dtype=np.int64, count=len(heads.errors))
    errors = {int(r): heads.errors[int(r)] for r in rows[np.isin(rows, bad_heads)]}
    lab = heads.label[rows]
    good = np.isfinite(lab) & (lab >= 0) & (lab < FLOAT32_EXACT) & (lab == np.floor(np.where(np.isfinite(lab), lab, 0)))
    labels = np.where(good, lab, -1).astype(np.int64)
    for j in np.flatnonzero(~good):
        r = int(rows[j])
        if r not in errors:
            errors[r] = RecordIOError(
                path,
                int(keys[r]),
                int(offsets[r]),
                f"label {float(lab[j])!r} is not a class id (an integer in [0, 2^24))",
            )
    return labels, errors


def read_labels(rec: RecordIOReader, keys: np.ndarray, offsets: np.ndarray, chunk: int = 1 << 20):
    """Class labels of image records from their heads only (no image bytes, no decoding).

    Returns (labels int64 (N,), errors dict row → ValueError) where errors holds the records whose
    head or label is malformed (labels -1 there).
    """
    heads = scan_heads(rec, keys, offsets, chunk)
    return class_labels(heads, np.arange(len(keys)), rec.path, keys, offsets)


@dataclass
class _Layout:
    """Which `.idx` rows are images: with a header record 0 = [A, B] (InsightFace), keys 1..A-1,
    and keys A..B-1 are identity records; without one (im2rec), every row."""

    image_rows: np.ndarray
    header: tuple[int, int] | None = None
    identity_rows: np.ndarray | None = None
    rec_path: Path | None = None
    offsets: np.ndarray | None = None

    @classmethod
    def of(cls, heads: RecordHeads, keys: np.ndarray, offsets: np.ndarray, rec_path: Path, idx_path: Path) -> _Layout:
        zero = np.flatnonzero(keys == 0)
        if zero.size == 0 or heads.flag[zero[0]] == 0:
            if zero.size and int(zero[0]) in heads.errors:
                raise heads.errors[int(zero[0])]
            return cls(np.arange(len(keys), dtype=np.int64), rec_path=rec_path, offsets=offsets)
        r0 = int(zero[0])
        if r0 in heads.errors:
            raise heads.errors[r0]
        a, b = heads.label[r0], heads.label2[r0]
        where = (rec_path, 0, int(offsets[r0]))
        if heads.flag[r0] < 2:
            raise RecordIOError(*where, f"header record has {heads.flag[r0]} label; expected [A, B]")
        if not (np.isfinite(a) and np.isfinite(b) and a == int(a) and b == int(b) and 1 <= a <= b < FLOAT32_EXACT):
            raise RecordIOError(
                *where, f"header record label [A, B] = [{float(a)!r}, {float(b)!r}] needs integers 1 <= A <= B < 2^24"
            )
        a, b = int(a), int(b)
        rows = _rows_of(keys, 1, a, idx_path, f"header record 0 = [{a}, {b}] says images are keys 1..{a - 1}")
        ids = None
        if ((keys >= a) & (keys < b)).any():  # identity records are optional; when present, all of them
            what = f"header record 0 = [{a}, {b}] says keys {a}..{b - 1} are identity records"
            ids = _rows_of(keys, a, b, idx_path, what)
        return cls(rows, (a, b), ids, rec_path, offsets)

    def check_identities(self, heads: RecordHeads, labels: np.ndarray, errors: dict) -> dict[int, ValueError]:
        """Identity records hold [start, end) key ranges that do not overlap, and each image's
        label is the class whose range holds its key. Malformed or overlapping ranges raise;
        returns errors row → RecordIOError for images whose label disagrees with the ranges."""
        if self.header is None or self.identity_rows is None or self.offsets is None:
            return {}
        a, _ = self.header
        ids, offsets = self.identity_rows, self.offsets
        start, end = heads.label[ids], heads.label2[ids]
        ok = np.isfinite(start) & np.isfinite(end) & (heads.flag[ids] >= 2)
        ok &= (start == np.floor(np.where(ok, start, 0))) & (end == np.floor(np.where(ok, end, 0)))
        ok &= (start >= 1) & (start <= end) & (end <= a)
        for j in np.flatnonzero(~ok)[:1]:
            r = int(ids[j])
            raise heads.errors.get(r) or RecordIOError(
                self.rec_path,
                a + int(j),
                int(offsets[r]),
                f"identity record of class {int(j)} has label {[float(start[j]), float(end[j])]!r}; "
                f"expected a key range [start, end) with 1 <= start <= end <= {a}",
            )
        start, end = start.astype(np.int64), end.astype(np.int64)
        order = np.argsort(start, kind="stable")
        nonempty = order[start[order] < end[order]]
        clash = np.flatnonzero(start[nonempty][1:] < end[nonempty][:-1])
        if clash.size:
            c1, c2 = int(nonempty[clash[0]]), int(nonempty[clash[0] + 1])
            raise ValueError(
                f"{self.rec_path}: identity records of classes {c1} (keys [{start[c1]}, {end[c1]})) and {c2} "
                f"(keys [{start[c2]}, {end[c2]})) overlap; each image key belongs to one identity"
            )
        owner = np.full(a - 1, -1, dtype=np.int64)
        lengths = end[nonempty] - start[nonempty]
        owner[np.repeat(start[nonempty] - 1, lengths) + _ranks(lengths)] = np.repeat(nonempty, lengths)
        out: dict[int, ValueError] = {}
        for j in np.flatnonzero(owner != labels).tolist():
            r = int(self.image_rows[j])
            if r not in errors:
                out[r] = RecordIOError(
                    self.rec_path,
                    j + 1,
                    int(offsets[r]),
                    f"label {int(labels[j])}, but the identity records give key {j + 1} to "
                    + (f"class {int(owner[j])}" if owner[j] >= 0 else "no class"),
                )
        return out


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 within each run of a run-length list: [2, 3] → [0, 1, 0, 1, 2]."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - starts


def _rows_of(keys: np.ndarray, lo: int, hi: int, idx_path: Path, what: str) -> np.ndarray:
    """Rows of `keys` holding each key lo..hi-1, in that order; ValueError naming the missing ones."""
    if hi - lo > len(keys):
        raise ValueError(f"{idx_path}: {what}, but the index has only {len(keys)} entries")
    wanted = np.arange(lo, hi, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], wanted)
    found = (pos < len(keys)) & (keys[order][np.minimum(pos, len(keys) - 1)] == wanted)
    if not found.all():
        missing = wanted[~found]
        raise ValueError(
            f"{idx_path}: {what}, but {missing.size} are missing from the index (first: {missing[:5].tolist()})"
        )
    return order[pos].astype(np.int64)


class RecordIODataset(EncodedImageDataset):
    """An InsightFace RecordIO training set as a facekd dataset (see the module docstring for the format).

    Args:
        prefix: the dataset folder (holding train.rec / train.idx / property) or a path stem
            (`x/train` → x/train.rec, x/train.idx); or give `rec=` (and `idx=`) instead.
        on_error: "raise" (default): a bad magic, truncated record, bad label (not an integer
            class id) or undecodable image raises RecordIOError / ValueError naming the file, key
            and byte offset. "skip": records with a malformed head or label are dropped when the
            dataset opens, and an undecodable image met in `__getitem__` is replaced by the next
            good row (the returned "index" is that row's). Each skip is appended to `.skipped` as
            (key, offset, reason) and reported with a warning (a DataLoader worker keeps its own
            `.skipped`). Errors of the layout itself (header, identity records, property, bytes
            of the `.rec` that no `.idx` entry covers) raise in both modes.
        image_size: default: height from `property`, else from the first image.
        augment, resize: see `EncodedImageDataset`.

    Attributes: `keys`, `offsets` (int64, one per dataset row), `labels`, `num_classes`,
    `image_size`, `header` ((A, B) from record 0 or None), `property` ((C, H, W, N) or None).
    Labels come from the record heads only (vectorised memmap reads, no image decoding).
    """

    def __init__(
        self,
        prefix: str | os.PathLike | None = None,
        *,
        rec=None,
        idx=None,
        on_error: str = "raise",
        augment: Augmentation | dict | None = None,
        image_size: int | None = None,
        resize: bool = False,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[tuple[int, int, str]] = []
        rec_path, idx_path, prop_path = resolve_paths(prefix, rec, idx)
        self.rec_path, self.idx_path = rec_path, idx_path
        self.reader = RecordIOReader(rec_path)
        all_keys, all_offsets = read_idx(idx_path)
        self.property = read_property(prop_path) if prop_path.is_file() else None
        self.property_path = prop_path if self.property else None
        heads = scan_heads(self.reader, all_keys, all_offsets)
        layout = _Layout.of(heads, all_keys, all_offsets, rec_path, idx_path)
        self.header = layout.header
        labels, errors = class_labels(heads, layout.image_rows, rec_path, all_keys, all_offsets)
        errors.update(layout.check_identities(heads, labels, errors))
        self._check_coverage(heads, all_keys, all_offsets, errors)
        keep = ~np.isin(layout.image_rows, np.fromiter(errors, dtype=np.int64, count=len(errors)))
        if errors:
            if on_error == "raise":
                raise errors[min(errors)]
            for row in sorted(errors):
                self.skipped.append((int(all_keys[row]), int(all_offsets[row]), str(errors[row])))
            first = self.skipped[0][2]
            warnings.warn(f"{rec_path}: skipped {len(errors)} malformed record(s); first: {first}", stacklevel=2)
        rows = layout.image_rows[keep]
        if rows.size == 0:
            raise ValueError(f"{rec_path}: no usable image record (expected at least one; see {idx_path})")
        self.keys, self.offsets, self.labels = all_keys[rows], all_offsets[rows], labels[keep]
        self.num_classes = self._class_count()
        self._check_property()
        if int(self.labels.max()) >= self.num_classes:
            row = int(np.argmax(self.labels))
            raise RecordIOError(
                rec_path,
                int(self.keys[row]),
                int(self.offsets[row]),
                f"label {int(self.labels[row])} >= num_classes = {self.num_classes}",
            )
        super().__init__(image_size or self._property_size(), augment, resize)

    def _class_count(self) -> int:
        if self.header is not None:
            return self.header[1] - self.header[0]
        if self.property is not None:
            return self.property[0]
        return int(self.labels.max()) + 1

    def _check_coverage(self, heads: RecordHeads, keys, offsets, errors: dict[int, ValueError]) -> None:
        """Every byte of the `.rec` belongs to an indexed record: overlapping records are errors of
        the record that runs over; unindexed bytes (a cut `.idx`) raise, or warn with on_error=skip."""
        rows = np.argsort(offsets, kind="stable")
        rows = rows[~np.isin(rows, np.fromiter(heads.errors, dtype=np.int64, count=len(heads.errors)))]
        if rows.size == 0:
            return
        start, end = offsets[rows], heads.end[rows]
        over = np.flatnonzero(end[:-1] > start[1:])
        for j in over.tolist():
            r = int(rows[j])
            errors.setdefault(
                r,
                RecordIOError(
                    self.rec_path,
                    int(keys[r]),
                    int(offsets[r]),
                    f"record runs to byte {int(end[j])}, into the next indexed record (key {int(keys[rows[j + 1]])} "
                    f"at byte {int(start[j + 1])})",
                ),
            )
        covered = int((end - start).sum())
        if over.size or heads.errors or covered == self.reader.size:
            return
        gap = np.flatnonzero(np.r_[start[0] > 0, end[:-1] < start[1:], end[-1] < self.reader.size])[0]
        at = 0 if gap == 0 else int(end[gap - 1])
        msg = (
            f"{self.rec_path}: {self.reader.size - covered} byte(s) are not covered by any record of {self.idx_path} "
            f"(first at byte {at}): records are missing from the index (a cut or foreign .idx)"
        )
        if self.on_error == "raise":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)

    def _check_property(self) -> None:
        if self.property is None:
            return
        c, h, w, n = self.property
        if c != self.num_classes:
            raise ValueError(
                f"{self.property_path}: num_classes {c} disagrees with the RecordIO header "
                f"({self.num_classes} = B - A from record 0 of {self.rec_path})"
            )
        if h != w:
            raise ValueError(f"{self.property_path}: images are {h}x{w}; facekd expects square faces")
        if n is not None and n != len(self.keys) + len(self.skipped):
            raise ValueError(
                f"{self.property_path}: says {n} images, {self.rec_path} holds {len(self.keys) + len(self.skipped)}"
            )

    def _property_size(self) -> int:
        """The image side: from the first image's header, checked against `property` when present."""
        data, where = self._encoded(0)
        h, w = image_size(data, where)
        if self.property is not None and (self.property[1], self.property[2]) != (h, w):
            raise ValueError(
                f"{self.property_path}: says images are {self.property[1]}x{self.property[2]}, but the first image "
                f"({where}) is {h}x{w}; fix the property file or pass image_size= with resize=True"
            )
        if w != h:
            raise ValueError(f"{where}: image is {h}x{w}; pass image_size= and resize=True for non-square images")
        return h

    def _where(self, i: int) -> str:
        return f"{self.rec_path}: key {int(self.keys[i])} at byte offset {int(self.offsets[i])}"

    def _encoded(self, i: int) -> tuple[bytes, str]:
        where = self._where(i)
        _, image = unpack_payload(self.reader.read(int(self.offsets[i]), int(self.keys[i])), where)
        return image, where

    def read_header(self, i: int) -> IRHeader:
        """IRHeader of dataset row i (labels, id, id2)."""
        return unpack_payload(self.reader.read(int(self.offsets[i]), int(self.keys[i])), self._where(i))[0]

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        if self.on_error == "raise":
            return self._item(i, self.load_image(i))
        for j in [*range(i, len(self)), *range(0, i)]:
            try:
                return self._item(j, self.load_image(j))
            except ValueError as e:
                self.skipped.append((int(self.keys[j]), int(self.offsets[j]), str(e)))
                warnings.warn(f"skipped (total {len(self.skipped)} in this process): {e}", stacklevel=2)
        raise ValueError(f"{self.rec_path}: no decodable image left")

    def verify(self) -> list[tuple[int, int, str]]:
        """Read and strictly decode every image (`EncodedImageDataset.verify_image`: corrupt JPEG
        data is an error too); return [(key, offset, reason)] of the bad ones (raises nothing)."""
        bad = []
        for i in range(len(self)):
            try:
                self.verify_image(i)
            except ValueError as e:
                bad.append((int(self.keys[i]), int(self.offsets[i]), str(e)))
        return bad

    def _fingerprint_parts(self) -> list[str]:
        h = hashlib.sha1(self.idx_path.read_bytes()).hexdigest()
        st = self.rec_path.stat()
        return [
            f"rec:{st.st_size}:{st.st_mtime_ns}",
            f"idx:{h}",
            f"prop:{self.property}",
            f"keys:{hashlib.sha1(self.keys.tobytes()).hexdigest()}",
        ]


def write_recordio(
    items: Iterable[tuple[np.ndarray | bytes, int]],
    prefix: str | os.PathLike,
    with_header: bool = True,
    quality: int = 95,
    num_classes: int | None = None,
) -> dict:
    """Pack (image, label) items into `prefix.rec`, `prefix.idx` and `<dir>/property`, atomically.

    `prefix`: an existing folder or a path ending in '/' (→ folder/train.rec, train.idx, property),
    else a path stem (`out/x` → out/x.rec, out/x.idx, out/property). Images are uint8
    (H, W, 3) RGB arrays (JPEG-encoded at `quality`) or already-encoded bytes (stored as given);
    all must have the same size. Labels are class ids 0..C-1 written as scalar float labels (flag 0).

    with_header=True writes InsightFace's layout: record 0 = [A, B], images at keys 1..A-1, one
    identity record per class at keys A..B-1 holding its key range; the items must then come
    grouped by label (each label in one contiguous run). with_header=False writes im2rec /
    shuffle_rec style: images at keys 0..N-1, no header. Returns {"num_images", "num_classes",
    "height", "width", "rec", "idx", "property"}.
    """
    rec_path, idx_path, prop_path = _output_paths(prefix)
    with atomic_path(rec_path) as rec_tmp, atomic_path(idx_path) as idx_tmp, atomic_path(prop_path) as prop_tmp:
        with open(rec_tmp, "wb") as f:
            writer = _RecordWriter(f, with_header, quality)
            for n, (image, label) in enumerate(items):
                writer.add(n, image, int(label))
            if writer.shape is None:
                raise ValueError(f"{rec_path}: no items to write")
            n_images = len(writer.index)
            num_classes = writer.max_label + 1 if num_classes is None else int(num_classes)
            if writer.max_label >= num_classes:
                raise ValueError(f"label {writer.max_label} >= num_classes={num_classes}")
            if with_header:
                writer.finish_header(num_classes)
        idx_tmp.write_text("".join(f"{k}\t{o}\n" for k, o in writer.index))
        h, w = writer.shape
        prop_tmp.write_text(f"{num_classes},{h},{w}\n{n_images}\n")
    return {
        "num_images": n_images,
        "num_classes": int(num_classes),
        "height": h,
        "width": w,
        "rec": str(rec_path),
        "idx": str(idx_path),
        "property": str(prop_path),
    }


class _RecordWriter:
    """Appends image records to an open `.rec`; with the header layout, tracks each label's key run
    and writes the identity records and record 0 (reserved first, filled in last)."""

    HEADER_SIZE = 8 + len(pack_payload([0.0, 0.0]))

    def __init__(self, f, with_header: bool, quality: int):
        self.f, self.with_header, self.quality = f, with_header, quality
        self.index: list[tuple[int, int]] = []
        self.runs: dict[int, tuple[int, int]] = {}
        self.shape: tuple[int, int] | None = None
        self.last: int | None = None
        self.max_label = -1
        self.key = 0
        if with_header:
            f.write(b"\0" * self.HEADER_SIZE)  # record 0 is written last, in place
            self.key = 1

    def add(self, n: int, image: np.ndarray | bytes, label: int) -> None:
        if not 0 <= label < FLOAT32_EXACT:
            raise ValueError(f"item {n}: label {label} must be in [0, 2^24) (float32 labels)")
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            hw = image_size(data, f"item {n} (label {label})")
        else:
            data = encode_jpeg(image, self.quality)
            hw = (int(np.asarray(image).shape[0]), int(np.asarray(image).shape[1]))
        if self.shape is None:
            self.shape = hw
        elif hw != self.shape:
            raise ValueError(f"item {n}: image is {hw[0]}x{hw[1]}, earlier images are {self.shape[0]}x{self.shape[1]}")
        self.max_label = max(self.max_label, label)
        if self.with_header:
            if label != self.last:
                if label in self.runs:
                    raise ValueError(
                        f"item {n}: label {label} appears again after other labels; with_header=True "
                        "needs the items grouped by label (sort them, or pass with_header=False)"
                    )
                self.runs[label] = (self.key, self.key)
                self.last = label
            self.runs[label] = (self.runs[label][0], self.key + 1)
        self.index.append((self.key, self.f.tell()))
        self.f.write(frame_record(pack_payload(float(label), data)))
        self.key += 1

    def finish_header(self, num_classes: int) -> None:
        """Identity records at keys A..B-1 (A = the next key), then record 0 = [A, B]."""
        a = self.key
        b = a + num_classes
        if b >= FLOAT32_EXACT:
            raise ValueError(f"header keys up to {b} are not exact in float32; use with_header=False")
        for c in range(num_classes):
            start, end = self.runs.get(c, (a, a))
            self.index.append((a + c, self.f.tell()))
            self.f.write(frame_record(pack_payload([float(start), float(end)])))
        head = frame_record(pack_payload([float(a), float(b)]))
        assert len(head) == self.HEADER_SIZE
        self.f.seek(0)
        self.f.write(head)
        self.index.insert(0, (0, 0))


def _output_paths(prefix: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Writer's (rec, idx, property): an existing folder or one written with a trailing '/' gets
    folder/train.*; anything else is a path stem (`out/train` → out/train.rec, out/train.idx)."""
    p = Path(prefix)
    if p.is_dir() or str(prefix).endswith(("/", os.sep)):
        return p / "train.rec", p / "train.idx", p / "property"
    stem = p.with_suffix("") if p.suffix in (".rec", ".idx") else p
    return stem.with_suffix(".rec"), stem.with_suffix(".idx"), stem.parent / "property"


def pack_dataset(
    ds: EncodedImageDataset, prefix: str | os.PathLike, with_header: bool = True, quality: int = 95
) -> dict:
    """Pack an image folder / list file dataset into RecordIO (see `write_recordio`).

    Images are stored as their original bytes when they are JPEGs of the dataset's size (no
    re-encoding, like im2rec --pass-through); others are decoded, resized if the dataset allows
    it, and JPEG-encoded at `quality`. With the header layout, rows are ordered by label (stable).
    """
    order = np.argsort(ds.labels, kind="stable") if with_header else np.arange(len(ds))

    def items():
        for i in order.tolist():
            data, where = ds._encoded(i)
            if data[:2] == b"\xff\xd8" and verify_image(data, where).shape[:2] == ds._shape:
                yield data, int(ds.labels[i])
            else:
                yield ds.load_image(i), int(ds.labels[i])

    return write_recordio(items(), prefix, with_header=with_header, quality=quality, num_classes=ds.num_classes)
