"""Fuzz the RecordIO and `.bin` readers with mutated files and count what happens to each one.

Every case starts from a small valid file set written by facekd's own writers (RecordIO in the
InsightFace layout with a multi-part record, RecordIO without header, `.bin` sets as protocol-4
bytes, protocol-2 numpy arrays and Python-2 byte strings), applies 1-3 random mutations (bit flips,
random bytes, "interesting" words such as inf / NaN / 3e38 / 0.5 / 2^24 at record-header positions,
truncation, inserted, deleted or duplicated chunks, edited `.idx` lines and `property` files), and
runs the reader on it in a worker process:

* RecordIO: `RecordIODataset(folder, on_error=raise|skip)`, then every image decoded;
* `.bin`: `load_bin(path, image_size=8)`.

Outcomes:

* `typed_error`: a ValueError / OSError whose message is one line naming the file;
* `accepted_valid`: the reader returned, and what it returned passes the oracle below;
* `accepted_wrong`: the reader returned something the oracle refutes;
* `untyped_exception`: any other exception, or a typed one whose message is vague (no file named,
  or several lines);
* `hang`: no answer within `--timeout` seconds (the worker is killed);
* `crash`: the worker died (a signal, e.g. SIGSEGV / SIGBUS, or the out-of-memory killer).

Oracle, RecordIO: each returned row's record, read independently from the raw bytes, has an
integral float label equal to the row's label and in [0, num_classes); the decoded image has the
dataset's size; when the `.rec` can be walked from byte 0 record by record, every record in it is
indexed (none is silently dropped; with on_error=skip, a warning counts as reporting the loss).
Oracle, `.bin`: (2N, 8, 8, 3) uint8 images and N bools.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz.py --cases 100000 --workers 2 --out fuzz.json

Workers run under an address-space limit (`--memory-gb`), so an allocation asked for by a length
field surfaces as MemoryError (untyped) instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import pickle
import resource
import shutil
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
from PIL import Image

OUTCOMES = ("typed_error", "accepted_valid", "accepted_wrong", "untyped_exception", "hang", "crash")
FAMILIES = ("recordio", "bin")
MAGIC = 0xCED7230A
SIZE = 8

# 4-byte words that make record headers interesting: float labels that are not class ids, lengths
# and flags at their limits, the magic itself.
_FLOATS = [float("inf"), float("-inf"), float("nan"), 3e38, 0.5, 1.5, 2.999, -1.0, 2.0**24, 1e9, 7.0]
_WORDS = [struct.pack("<f", v) for v in _FLOATS] + [
    struct.pack("<I", v) for v in (0, 1, 2, 3, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, MAGIC, 1 << 29, (1 << 29) - 1, 99)
]


# --------------------------------------------------------------------------------------------
# seed files


def _jpeg(seed: int, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def recordio_seeds() -> list[dict[str, bytes]]:
    """Two valid RecordIO sets as {file name: bytes}: InsightFace layout (3 classes, 6 images, one
    image payload split in 3 parts by aligned magic words), and im2rec layout without header."""
    from facekd.data.recordio import write_recordio

    multipart = _jpeg(5)
    multipart += b"\0" * (-(24 + len(multipart)) % 4) + struct.pack("<I", MAGIC) + b"tail"
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        items = [(_jpeg(0), 0), (_jpeg(1), 0), (multipart, 1), (_jpeg(2), 1), (_jpeg(3), 2), (_jpeg(4), 2)]
        write_recordio(items, f"{tmp}/a/")
        write_recordio([(_jpeg(10 + k), k % 3) for k in range(5)], f"{tmp}/b/", with_header=False)
        for d in ("a", "b"):
            seeds.append({name: (Path(tmp) / d / name).read_bytes() for name in ("train.rec", "train.idx", "property")})
    return seeds


def bin_seeds() -> list[bytes]:
    """Three valid `.bin` sets (2 pairs): protocol-4 bytes, protocol-2 numpy uint8 arrays, and the
    byte stream Python 2's cPickle writes (str entries)."""
    jpegs = [_jpeg(20 + k) for k in range(4)]
    issame = [True, False]
    p4 = pickle.dumps((jpegs, issame), protocol=4)
    p2 = pickle.dumps(([np.frombuffer(j, np.uint8) for j in jpegs], [np.bool_(v) for v in issame]), protocol=2)

    def py2_str(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    py2 = b"\x80\x02](" + b"".join(py2_str(j) for j in jpegs) + b"e](" + b"\x88\x89" + b"e\x86."
    return [p4, p2, py2]


# --------------------------------------------------------------------------------------------
# mutations


def _record_positions(rec: bytes) -> list[int]:
    """Byte positions of header fields: each record's magic, lrecord, flag, label, first labels."""
    out, pos = [], 0
    while pos + 8 <= len(rec):
        magic, lrec = struct.unpack_from("<II", rec, pos)
        if magic != MAGIC:
            break
        out += [pos, pos + 4, pos + 8, pos + 12, pos + 32, pos + 36]
        length = lrec & ((1 << 29) - 1)
        pos += 8 + length + (-length % 4)
    return [p for p in out if p + 4 <= len(rec)] or [0]


def mutate_bytes(data: bytes, rng: np.random.Generator, positions: list[int] | None = None) -> bytes:
    b = bytearray(data)
    op = int(rng.integers(0, 7))
    if not b:
        return bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
    if op == 0:  # flip bits
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif op == 1:  # random bytes
        i = int(rng.integers(0, len(b)))
        n = int(rng.integers(1, 9))
        b[i : i + n] = bytes(rng.integers(0, 256, n, dtype=np.uint8))
    elif op == 2:  # an interesting word, at a header field when we know where those are
        word = _WORDS[int(rng.integers(0, len(_WORDS)))]
        if positions and rng.random() < 0.7:
            i = positions[int(rng.integers(0, len(positions)))]
        else:
            i = int(rng.integers(0, max(1, len(b) - 3))) & ~3
        b[i : i + 4] = word
    elif op == 3:  # truncate
        del b[int(rng.integers(0, len(b))) :]
    elif op == 4:  # insert a chunk
        i = int(rng.integers(0, len(b) + 1))
        b[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8))
    elif op == 5:  # delete a chunk
        i = int(rng.integers(0, len(b)))
        del b[i : i + int(rng.integers(1, 33))]
    else:  # duplicate a chunk
        i = int(rng.integers(0, len(b)))
        j = min(len(b), i + int(rng.integers(1, 65)))
        k = int(rng.integers(0, len(b) + 1))
        b[k:k] = b[i:j]
    return bytes(b)


def mutate_idx(data: bytes, rng: np.random.Generator) -> bytes:
    lines = data.decode("ascii").splitlines(keepends=True)
    op = int(rng.integers(0, 6))
    if op == 0 and lines:  # drop a line (the last one: a cut index)
        del lines[int(rng.integers(0, len(lines))) if rng.random() < 0.5 else -1]
    elif op == 1 and lines:  # cut at a line boundary
        lines = lines[: int(rng.integers(0, len(lines)))]
    elif op == 2 and lines:  # move an offset
        i = int(rng.integers(0, len(lines)))
        k, off = lines[i].split()
        delta = int(rng.choice([-8, -4, 4, 8, 1, 1 << 20, -(1 << 40)]))
        lines[i] = f"{k}\t{int(off) + delta}\n"
    elif op == 3 and len(lines) > 1:  # swap two keys
        i, j = rng.choice(len(lines), 2, replace=False)
        (ki, oi), (kj, oj) = lines[i].split(), lines[j].split()
        lines[i], lines[j] = f"{kj}\t{oi}\n", f"{ki}\t{oj}\n"
    elif op == 4 and lines:  # duplicate a line
        lines.insert(int(rng.integers(0, len(lines))), lines[int(rng.integers(0, len(lines)))])
    else:
        return mutate_bytes(data, rng)
    return "".join(lines).encode()


def mutate_property(data: bytes, rng: np.random.Generator) -> bytes:
    choices = [b"", b"\xff\xfe3,8,8\n", b"3,8\n", b"3,112,112\n", b"3,8,8\n-5\n", b"0,8,8\n", b"3,8,9\n", b"x,y,z\n"]
    if rng.random() < 0.5:
        return choices[int(rng.integers(0, len(choices)))]
    return mutate_bytes(data, rng)


def make_recordio_case(rng: np.random.Generator, seeds: list[dict[str, bytes]]) -> dict[str, bytes]:
    files = dict(seeds[int(rng.integers(0, len(seeds)))])
    for _ in range(int(rng.integers(1, 4))):
        target = rng.choice(["train.rec", "train.idx", "property"], p=[0.7, 0.2, 0.1])
        if target == "train.rec":
            files[target] = mutate_bytes(files[target], rng, _record_positions(files[target]))
        elif target == "train.idx":
            try:
                files[target] = mutate_idx(files[target], rng)
            except (UnicodeDecodeError, ValueError):
                files[target] = mutate_bytes(files[target], rng)
        else:
            files[target] = mutate_property(files[target], rng)
    return files


def make_bin_case(rng: np.random.Generator, seeds: list[bytes]) -> bytes:
    data = seeds[int(rng.integers(0, len(seeds)))]
    for _ in range(int(rng.integers(1, 4))):
        data = mutate_bytes(data, rng)
    return data


# --------------------------------------------------------------------------------------------
# oracles


def _reference_records(rec: bytes) -> list[int] | None:
    """Start offsets of the records of `rec` walked from byte 0 (multi-part records as one), or
    None when the walk does not reach the end of the file exactly."""
    out, pos, in_multi = [], 0, False
    while pos < len(rec):
        if pos + 8 > len(rec):
            return None
        magic, lrec = struct.unpack_from("<II", rec, pos)
        cflag, length = (lrec >> 29) & 7, lrec & ((1 << 29) - 1)
        if magic != MAGIC or cflag > 3 or (cflag in (2, 3)) != in_multi:
            return None
        if not in_multi:
            out.append(pos)
        in_multi = cflag in (1, 2)
        pos += 8 + length + (-length % 4)
    return out if pos == len(rec) and not in_multi else None


def _reference_label(rec: bytes, offset: int) -> float | None:
    """The class label of the record at `offset` (first label of a vector), read from raw bytes."""
    parts, pos = [], offset
    while True:
        if pos + 8 > len(rec):
            return None
        magic, lrec = struct.unpack_from("<II", rec, pos)
        cflag, length = (lrec >> 29) & 7, lrec & ((1 << 29) - 1)
        if magic != MAGIC:
            return None
        parts.append(rec[pos + 8 : pos + 8 + length])
        pos += 8 + length + (-length % 4)
        if cflag in (0, 3):
            break
    payload = struct.pack("<I", MAGIC).join(parts)
    if len(payload) < 24:
        return None
    flag, label = struct.unpack_from("<If", payload)
    if flag > 0:
        if len(payload) < 28:
            return None
        (label,) = struct.unpack_from("<f", payload, 24)
    return float(label)


def check_recordio(folder: Path, files: dict[str, bytes], skip: bool) -> tuple[str, str]:
    from facekd.data.recordio import RecordIODataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = RecordIODataset(folder, on_error="skip" if skip else "raise")
        if skip:  # an undecodable image is replaced by the next good row: check the rows returned
            items = [ds[i] for i in range(len(ds))]
            rows = sorted({int(item["index"]) for item in items})
            shapes = [tuple(item["image"].shape[1:]) for item in items]
        else:
            rows = list(range(len(ds)))
            shapes = [ds.load_image(i).shape[:2] for i in rows]
    rec = files["train.rec"]
    for row in rows:
        want = _reference_label(rec, int(ds.offsets[row]))
        got = int(ds.labels[row])
        if want is None or not np.isfinite(want) or want != int(want) or int(want) != got:
            return "accepted_wrong", f"row {row}: label {got}, record says {want!r}"
        if not 0 <= got < ds.num_classes:
            return "accepted_wrong", f"row {row}: label {got} outside [0, {ds.num_classes})"
    for shape in shapes:
        if tuple(shape) != ds._shape:
            return "accepted_wrong", f"image of size {shape}, dataset size {ds._shape}"
    walked = _reference_records(rec)
    if walked is not None and not caught:  # with on_error=skip a warning reports what was dropped
        idx_offsets = set()
        for line in files["train.idx"].decode("ascii", "replace").split("\n"):  # lines end at \n only
            fields = line.split()
            if len(fields) == 2 and fields[1].lstrip("-").isdigit():
                idx_offsets.add(int(fields[1]))
        missing = [o for o in walked if o not in idx_offsets]
        if missing:
            return "accepted_wrong", f"{len(missing)} record(s) not in the .idx (first at byte {missing[0]})"
    return "accepted_valid", ""


def check_bin(path: Path) -> tuple[str, str]:
    from facekd.data.binset import load_bin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, issame = load_bin(path, image_size=SIZE)
    n = len(issame)
    if not isinstance(issame, np.ndarray) or issame.dtype != bool or issame.ndim != 1:
        return "accepted_wrong", f"issame {type(issame).__name__} {getattr(issame, 'dtype', '')}"
    if images.dtype != np.uint8 or images.shape != (2 * n, SIZE, SIZE, 3):
        return "accepted_wrong", f"images {images.dtype} {images.shape} for {n} pairs"
    return "accepted_valid", ""


def classify_exception(e: BaseException, where: Path) -> tuple[str, str]:
    msg = str(e)
    detail = f"{type(e).__name__}: {' '.join(msg.split())[:200]}"
    typed = isinstance(e, (ValueError, OSError)) and not isinstance(e, UnicodeError)
    if typed and "\n" not in msg.strip() and str(where) in msg:
        return "typed_error", detail
    return "untyped_exception", detail


# --------------------------------------------------------------------------------------------
# running cases in worker processes


def run_case(index: int, seed: int, workdir: Path, seeds) -> tuple[str, str, str]:
    """Build case `index` of run `seed` in `workdir` and run its reader → (family, outcome, detail)."""
    rng = np.random.default_rng([seed, index])
    family = FAMILIES[index % 2]
    case = workdir / f"case{index}"
    case.mkdir(parents=True)
    try:
        if family == "recordio":
            files = make_recordio_case(rng, seeds["recordio"])
            for name, data in files.items():
                (case / name).write_bytes(data)
            skip = bool(rng.random() < 0.3)
            try:
                outcome, detail = check_recordio(case, files, skip)
            except Exception as e:
                outcome, detail = classify_exception(e, case)
        else:
            path = case / "x.bin"
            path.write_bytes(make_bin_case(rng, seeds["bin"]))
            try:
                outcome, detail = check_bin(path)
            except Exception as e:
                outcome, detail = classify_exception(e, case)
        return family, outcome, detail
    finally:
        shutil.rmtree(case, ignore_errors=True)


def _worker(conn, seed: int, workdir: str, memory_gb: float) -> None:
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    seeds = {"recordio": recordio_seeds(), "bin": bin_seeds()}
    conn.send("ready")
    while True:
        index = conn.recv()
        if index is None:
            return
        conn.send((index, *run_case(index, seed, Path(workdir), seeds)))


class _Worker:
    def __init__(self, ctx, seed: int, workdir: str, memory_gb: float):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, seed, workdir, memory_gb), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")
        self.index: int | None = None
        self.started = 0.0

    def give(self, index: int) -> None:
        self.index, self.started = index, time.monotonic()
        self.conn.send(index)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


def run_fuzz(cases: int, seed: int = 0, workers: int = 1, timeout: float = 10.0, memory_gb: float = 3.0) -> dict:
    """Run `cases` fuzz cases (alternating RecordIO / .bin) → {"counts": {family: {outcome: n}},
    "examples": {family: {outcome: [(index, detail), ...]}}, "untyped_kinds": {family: {kind: n}}}."""
    ctx = mp.get_context("fork")
    counts = {f: Counter({o: 0 for o in OUTCOMES}) for f in FAMILIES}
    examples: dict[str, dict[str, list]] = {f: {o: [] for o in OUTCOMES} for f in FAMILIES}
    kinds: dict[str, Counter] = {f: Counter() for f in FAMILIES}

    def record(index: int, family: str, outcome: str, detail: str) -> None:
        counts[family][outcome] += 1
        if outcome == "untyped_exception":
            kinds[family][detail.split(":")[0]] += 1
        if len(examples[family][outcome]) < 5 and outcome != "accepted_valid":
            examples[family][outcome].append((index, detail))

    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as workdir:
        pool = [_Worker(ctx, seed, workdir, memory_gb) for _ in range(max(1, workers))]
        todo = iter(range(cases))
        for w in pool:
            i = next(todo, None)
            if i is not None:
                w.give(i)
        while any(w.index is not None for w in pool):
            busy = [w for w in pool if w.index is not None]
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.5)
            for k, w in enumerate(pool):
                if w.index is None:
                    continue
                fresh = False
                if w.conn in ready:
                    try:
                        index, family, outcome, detail = w.conn.recv()
                        record(index, family, outcome, detail)
                    except (EOFError, OSError):
                        fresh = True
                elif w.proc.sentinel in ready or not w.proc.is_alive():
                    fresh = True
                elif time.monotonic() - w.started > timeout:
                    w.kill()
                    record(w.index, FAMILIES[w.index % 2], "hang", f"no answer in {timeout:g} s")
                    w = pool[k] = _Worker(ctx, seed, workdir, memory_gb)
                else:
                    continue
                if fresh:
                    code = w.proc.exitcode
                    w.kill()
                    record(w.index, FAMILIES[w.index % 2], "crash", f"worker exit code {code}")
                    w = pool[k] = _Worker(ctx, seed, workdir, memory_gb)
                w.index = None
                i = next(todo, None)
                if i is not None:
                    w.give(i)
        for w in pool:
            w.conn.send(None)
            w.proc.join(5)
    return {
        "cases": cases,
        "seed": seed,
        "counts": {f: dict(c) for f, c in counts.items()},
        "untyped_kinds": {f: dict(c) for f, c in kinds.items()},
        "examples": examples,
    }


def format_table(result: dict) -> str:
    lines = [f"| family | cases | {' | '.join(OUTCOMES)} |", "|---" * (len(OUTCOMES) + 2) + "|"]
    for family, c in result["counts"].items():
        lines.append(f"| {family} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    ap.add_argument("--memory-gb", type=float, default=3.0, help="address-space limit of each worker")
    ap.add_argument("--out", type=Path, help="write the counts and examples as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = run_fuzz(args.cases, args.seed, args.workers, args.timeout, args.memory_gb)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(format_table(result))
    for family in FAMILIES:
        if result["untyped_kinds"][family]:
            print(f"{family} untyped: {result['untyped_kinds'][family]}")
        for outcome in ("accepted_wrong", "untyped_exception", "hang", "crash"):
            for index, detail in result["examples"][family][outcome][:3]:
                print(f"  {family} {outcome} case {index}: {detail}")
    print(f"{args.cases} cases in {result['seconds']} s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
