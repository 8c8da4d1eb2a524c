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
import io
import os
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facekd.data.folder import EncodedImageDataset, Transform, decode_image, encode_jpeg
from facekd.utils import atomic_path

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LEGACY_MAGIC = 0x3ED7230A  # dmlc-core before 2015: 30-bit length, cflag << 30; not used by InsightFace data
LENGTH_MASK = (1 << 29) - 1
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
FLOAT32_EXACT = 1 << 24  # largest range of integers a float32 label holds exactly


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


def pack_payload(label: float | Iterable[float], image: bytes = b"", id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + labels + image bytes, as mxnet `recordio.pack`: a scalar label gives flag 0."""
    if np.ndim(label) == 0:
        return struct.pack(IR_FORMAT, 0, float(label), id, id2) + image
    labels = np.asarray(label, dtype="<f4").ravel()
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
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: expected 'key<TAB>offset' with two integers, got {line.rstrip()!r}"
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
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        c, h, w = (int(v) for v in lines[0].split(","))
        n = int(lines[1]) if len(lines) > 1 else None
    except (ValueError, IndexError):
        raise ValueError(
            f"{path}: expected 'num_classes,height,width' (and optionally the image count "
            f"on a second line), got {lines[:2]!r}"
        ) from None
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
        fd, parts, pos = self._handle(), [], int(offset)
        while True:
            head = os.pread(fd, 8, pos)
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
            if (cflag in (2, 3)) != bool(parts):
                what = (
                    "continuation part (cflag %d) without a start part" % cflag
                    if not parts
                    else "new record (cflag %d) inside a multi-part record" % cflag
                )
                raise RecordIOError(self.path, key, pos, what)
            data = os.pread(fd, length, pos + 8)
            if len(data) < length:
                raise RecordIOError(
                    self.path,
                    key,
                    pos,
                    f"truncated record: lrecord announces {length} bytes, only {len(data)} remain in the file",
                )
            parts.append(data)
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)


def _bad_magic(magic: int) -> str:
    if magic == LEGACY_MAGIC:
        return (
            "magic 0x3ED7230A of the pre-2015 dmlc RecordIO format; InsightFace data uses 0xCED7230A — "
            "re-pack the file with a current im2rec"
        )
    return f"bad magic 0x{magic:08X}, expected 0xCED7230A (not a RecordIO record, or a wrong offset in the .idx)"


def read_labels(rec: RecordIOReader, keys: np.ndarray, offsets: np.ndarray, chunk: int = 1 << 20):
    """Class labels of image records from their headers only (no image bytes, no decoding).

    Vectorised over a uint32 memory map of the `.rec` file: reads the magic, lrecord, flag and the
    first label word of each record. Returns (labels int64 (N,), errors dict row → ValueError)
    where errors holds the records whose head or label is malformed (labels -1 there).
    """
    n = len(keys)
    labels = np.full(n, -1, dtype=np.int64)
    errors: dict[int, ValueError] = {}
    nwords = rec.size // 4
    if nwords == 0:
        return labels, {
            i: RecordIOError(rec.path, int(keys[i]), int(offsets[i]), "the .rec file is empty") for i in range(n)
        }
    mm = np.memmap(rec.path, dtype="<u4", mode="r", shape=(nwords,))
    for s in range(0, n, chunk):
        off = offsets[s : s + chunk]
        w = off // 4
        slow = np.zeros(len(off), dtype=bool)
        bad = np.full(len(off), "", dtype=object)
        bad[off % 4 != 0] = "offset is not 4-byte aligned (RecordIO records start on 4-byte boundaries)"
        bad[(off < 0) | (off + 8 > rec.size)] = "truncated record: offset + 8-byte head lies past the end of the file"
        ok = bad == ""

        def word(k):
            idx = np.clip(w + k, 0, nwords - 1)
            return mm[idx].astype(np.int64)

        magic, lrec = word(0), word(1)
        bad[ok & (magic != MAGIC)] = "bad magic"
        ok = bad == ""
        cflag, length = (lrec >> 29) & 7, lrec & LENGTH_MASK
        bad[ok & ((cflag == 2) | (cflag == 3))] = "record starts with a continuation part (cflag 2/3)"
        ok = bad == ""
        bad[ok & (cflag == 0) & (off + 8 + length > rec.size)] = (
            "truncated record: payload runs past the end of the file"
        )
        ok = bad == ""
        flag = word(2)
        need = np.where(flag > 0, IR_SIZE + 4, IR_SIZE)
        short = ok & (length < need)
        slow |= short & (cflag == 1)  # the first part of a split record is shorter than the header
        bad[short & (cflag == 0)] = "payload shorter than the IRHeader (and its first label)"
        ok = (bad == "") & ~slow
        lab = np.where(flag > 0, word(8), word(3)).astype(np.uint32).view(np.float32)
        rows = np.flatnonzero(ok)
        labels_chunk = _float_labels(lab[rows], rec.path, keys[s + rows], off[rows], errors, s + rows)
        labels[s + rows] = labels_chunk
        for r in np.flatnonzero(slow):
            try:
                header, _ = unpack_payload(
                    rec.read(int(off[r]), int(keys[s + r])),
                    f"{rec.path}: key {int(keys[s + r])} at byte offset {int(off[r])}",
                )
                labels[s + r] = _float_labels(
                    header.labels[:1], rec.path, keys[s + r : s + r + 1], off[r : r + 1], errors, [s + r]
                )[0]
            except ValueError as e:
                errors[s + r] = e
        for r in np.flatnonzero(bad != ""):
            what = _bad_magic(int(magic[r])) if bad[r] == "bad magic" else bad[r]
            errors[s + r] = RecordIOError(rec.path, int(keys[s + r]), int(off[r]), what)
    del mm
    return labels, errors


def _float_labels(lab, path, keys, offs, errors, rows) -> np.ndarray:
    """float32 class labels → int64 (int() truncation, as arcface_torch); NaN/negative/huge → error."""
    lab = np.asarray(lab, dtype=np.float64)
    good = np.isfinite(lab) & (lab >= 0) & (lab < FLOAT32_EXACT)
    out = np.where(good, lab, -1).astype(np.int64)
    for j in np.flatnonzero(~good):
        errors[int(rows[j])] = RecordIOError(
            path, int(keys[j]), int(offs[j]), f"label {lab[j]!r} is not a class id (finite, >= 0, < 2^24)"
        )
    return out


class RecordIODataset(EncodedImageDataset):
    """An InsightFace RecordIO training set as a facekd dataset (see the module docstring for the format).

    Args:
        prefix: the dataset folder (holding train.rec / train.idx / property) or a path stem
            (`x/train` → x/train.rec, x/train.idx); or give `rec=` (and `idx=`) instead.
        on_error: "raise" (default): a bad magic, truncated record, bad label or undecodable JPEG
            raises RecordIOError / ValueError naming the file, key and byte offset.
            "skip": records with a malformed head are dropped when the dataset opens, and an
            undecodable image met in `__getitem__` is replaced by the next good row (the returned
            "index" is that row's). Each skip is appended to `.skipped` as (key, offset, reason) and
            reported with a warning (a DataLoader worker keeps its own `.skipped`).
        image_size: default: height from `property`, else from the first image.
        transform, resize: see `EncodedImageDataset`.

    Attributes: `keys`, `offsets` (int64, one per dataset row), `labels`, `num_classes`,
    `image_size`, `header` ((A, B) from record 0 or None), `property` ((C, H, W, N) or None).
    Labels come from the record headers only (vectorised memmap reads, no image decoding).
    """

    def __init__(
        self,
        prefix: str | os.PathLike | None = None,
        *,
        rec=None,
        idx=None,
        on_error: str = "raise",
        transform: Transform | None = None,
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

        key_to_off = dict(zip(all_keys.tolist(), all_offsets.tolist()))
        self.header = None
        keys = all_keys
        if 0 in key_to_off:
            head, _ = unpack_payload(
                self.reader.read(key_to_off[0], 0), f"{rec_path}: key 0 at byte offset {key_to_off[0]}"
            )
            if head.flag > 0:
                if head.flag < 2:
                    raise RecordIOError(
                        rec_path, 0, key_to_off[0], f"header record has {head.flag} label; expected [A, B]"
                    )
                a, b = int(head.labels[0]), int(head.labels[1])
                if not 1 <= a <= b:
                    raise RecordIOError(
                        rec_path, 0, key_to_off[0], f"header record label [A, B] = [{a}, {b}] needs 1 <= A <= B"
                    )
                missing = [k for k in range(1, a) if k not in key_to_off]
                if missing:
                    raise ValueError(
                        f"{idx_path}: header record says images are keys 1..{a - 1}, "
                        f"but {len(missing)} are missing from the index (first: {missing[:5]})"
                    )
                self.header = (a, b)
                keys = np.arange(1, a, dtype=np.int64)
        offsets = np.asarray([key_to_off[k] for k in keys.tolist()], dtype=np.int64)

        labels, errors = read_labels(self.reader, keys, offsets)
        if errors:
            if on_error == "raise":
                raise errors[min(errors)]
            keep = np.ones(len(keys), dtype=bool)
            for row in sorted(errors):
                keep[row] = False
                self.skipped.append((int(keys[row]), int(offsets[row]), str(errors[row])))
            keys, offsets, labels = keys[keep], offsets[keep], labels[keep]
            warnings.warn(f"{rec_path}: skipped {len(errors)} malformed record(s); first: {self.skipped[0][2]}")
            if len(keys) == 0:
                raise ValueError(f"{rec_path}: every record is malformed")
        self.keys, self.offsets, self.labels = keys, offsets, labels

        if self.header is not None:
            self.num_classes = self.header[1] - self.header[0]
        elif self.property is not None:
            self.num_classes = self.property[0]
        else:
            self.num_classes = int(labels.max()) + 1
        self._check_property()
        if int(labels.max()) >= self.num_classes:
            row = int(np.argmax(labels))
            raise RecordIOError(
                rec_path,
                int(keys[row]),
                int(offsets[row]),
                f"label {int(labels[row])} >= num_classes = {self.num_classes}",
            )
        if image_size is None:
            image_size = self.property[1] if self.property else self._first_image_size()
        super().__init__(image_size, transform, resize)

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

    def _first_image_size(self) -> int:
        data, where = self._encoded(0)
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
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
                warnings.warn(f"skipped (total {len(self.skipped)} in this process): {e}")
        raise ValueError(f"{self.rec_path}: no decodable image left")

    def verify(self) -> list[tuple[int, int, str]]:
        """Read and decode every image; return [(key, offset, reason)] of the bad ones (raises nothing)."""
        bad = []
        for i in range(len(self)):
            try:
                self.load_image(i)
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
    header_payload_size = len(pack_payload([0.0, 0.0]))
    index: list[tuple[int, int]] = []
    runs: dict[int, tuple[int, int]] = {}
    shape = None
    with atomic_path(rec_path) as rec_tmp, atomic_path(idx_path) as idx_tmp, atomic_path(prop_path) as prop_tmp:
        with open(rec_tmp, "wb") as f:
            key = 0
            if with_header:
                f.write(b"\0" * (8 + header_payload_size))  # record 0 is written last, in place
                key = 1
            last, max_label = None, -1
            for n, (image, label) in enumerate(items):
                label = int(label)
                if not 0 <= label < FLOAT32_EXACT:
                    raise ValueError(f"item {n}: label {label} must be in [0, 2^24) (float32 labels)")
                if isinstance(image, (bytes, bytearray, memoryview)):
                    data = bytes(image)
                    with Image.open(io.BytesIO(data)) as im:
                        hw = (im.size[1], im.size[0])
                else:
                    data = encode_jpeg(image, quality)
                    hw = tuple(np.asarray(image).shape[:2])
                if shape is None:
                    shape = hw
                elif hw != shape:
                    raise ValueError(f"item {n}: image is {hw[0]}x{hw[1]}, earlier images are {shape[0]}x{shape[1]}")
                max_label = max(max_label, label)
                if with_header and label != last:
                    if label in runs:
                        raise ValueError(
                            f"item {n}: label {label} appears again after other labels; with_header=True "
                            "needs the items grouped by label (sort them, or pass with_header=False)"
                        )
                    runs[label] = (key, key)
                    last = label
                if with_header:
                    runs[label] = (runs[label][0], key + 1)
                index.append((key, f.tell()))
                f.write(frame_record(pack_payload(float(label), data)))
                key += 1
            if shape is None:
                raise ValueError(f"{rec_path}: no items to write")
            n_images = len(index)
            num_classes = max_label + 1 if num_classes is None else int(num_classes)
            if max_label >= num_classes:
                raise ValueError(f"label {max_label} >= num_classes={num_classes}")
            if with_header:
                a = key
                b = a + num_classes
                if b >= FLOAT32_EXACT:
                    raise ValueError(f"header keys up to {b} are not exact in float32; use with_header=False")
                for c in range(num_classes):
                    start, end = runs.get(c, (a, a))
                    index.append((a + c, f.tell()))
                    f.write(frame_record(pack_payload([float(start), float(end)])))
                head = frame_record(pack_payload([float(a), float(b)]))
                assert len(head) == 8 + header_payload_size
                f.seek(0)
                f.write(head)
                index.insert(0, (0, 0))
        idx_tmp.write_text("".join(f"{k}\t{o}\n" for k, o in index))
        prop_tmp.write_text(f"{num_classes},{shape[0]},{shape[1]}\n{n_images}\n")
    return {
        "num_images": n_images,
        "num_classes": int(num_classes),
        "height": shape[0],
        "width": shape[1],
        "rec": str(rec_path),
        "idx": str(idx_path),
        "property": str(prop_path),
    }


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
            if data[:2] == b"\xff\xd8" and decode_image(data, where).shape[:2] == ds._shape:
                yield data, int(ds.labels[i])
            else:
                yield ds.load_image(i), int(ds.labels[i])

    return write_recordio(items(), prefix, with_header=with_header, quality=quality, num_classes=ds.num_classes)
