"""RecordIO reader/writer on files written byte by byte from the dmlc / mxnet spec in this test."""

from __future__ import annotations

import io
import os
import pickle
import stat
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.data.recordio import RecordIODataset, RecordIOError, frame_record, unpack_payload, write_recordio

MAGIC = 0xCED7230A
SIZE = 8


def jpeg(seed: int, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def head(cflag: int, length: int) -> bytes:
    """Magic + lrecord (cflag in the top 3 bits, length in the low 29), little-endian."""
    return struct.pack("<II", MAGIC, (cflag << 29) | length)


def pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def record(payload: bytes) -> bytes:
    """A complete (cflag 0) record: the caller makes sure the payload holds no aligned magic."""
    return head(0, len(payload)) + payload + pad(len(payload))


def irheader(flag: int, label: float, id1: int = 0, id2: int = 0) -> bytes:
    return struct.pack("<I", flag) + struct.pack("<f", label) + struct.pack("<Q", id1) + struct.pack("<Q", id2)


def floats(*v) -> bytes:
    return b"".join(struct.pack("<f", x) for x in v)


def write_files(tmp_path, records: list[tuple[int, bytes]], prop: str | None = None, idx_order=None):
    """records: (key, framed bytes) in file order; idx lines in idx_order (default file order)."""
    rec, offsets = bytearray(), {}
    for key, data in records:
        offsets[key] = len(rec)
        rec += data
    (tmp_path / "train.rec").write_bytes(bytes(rec))
    order = idx_order if idx_order is not None else [k for k, _ in records]
    (tmp_path / "train.idx").write_text("".join(f"{k}\t{offsets[k]}\n" for k in order))
    if prop is not None:
        (tmp_path / "property").write_text(prop)
    return offsets


def insightface_layout(tmp_path):
    """Header record 0 = [4, 6]: images at keys 1..3, identity records at keys 4, 5 (2 classes).

    key 2 is a vector label [1, 7] (flag 2); key 3 is a multi-part record: its IRHeader's id and id2
    fields hold the magic word at payload offsets 8 and 16, so the writer splits it into a start
    part (payload[0:8], cflag 1), a middle part (payload[12:16], cflag 2) and an end part
    (payload[20:], cflag 3), the magic words themselves dropped.
    """
    imgs = {1: jpeg(1), 2: jpeg(2), 3: jpeg(3)}
    recs = [(0, record(irheader(2, 0.0) + floats(4.0, 6.0)))]
    recs.append((1, record(irheader(0, 0.0) + imgs[1])))
    recs.append((2, record(irheader(2, 0.0) + floats(1.0, 7.0) + imgs[2])))
    payload3 = irheader(0, 1.0, MAGIC, MAGIC) + imgs[3]
    end = payload3[20:]
    multipart = head(1, 8) + payload3[0:8] + head(2, 4) + payload3[12:16] + head(3, len(end)) + end + pad(len(end))
    recs.append((3, multipart))
    recs.append((4, record(irheader(2, 0.0) + floats(1.0, 2.0))))
    recs.append((5, record(irheader(2, 0.0) + floats(2.0, 4.0))))
    return recs, imgs, payload3


def test_insightface_layout_header_vector_label_multipart(tmp_path):
    recs, imgs, payload3 = insightface_layout(tmp_path)
    write_files(tmp_path, recs, prop="2,8,8\n3\n")
    ds = RecordIODataset(tmp_path)
    assert ds.header == (4, 6) and ds.num_classes == 2 and len(ds) == 3 and ds.image_size == SIZE
    assert ds.keys.tolist() == [1, 2, 3]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 1]
    # the multi-part record comes back whole, magic words re-inserted
    assert ds.reader.read(int(ds.offsets[2]), 3) == payload3
    h = ds.read_header(2)
    assert h.id == MAGIC and h.id2 == MAGIC
    assert ds.read_header(1).flag == 2 and ds.read_header(1).labels.tolist() == [1.0, 7.0]
    for row, key in enumerate([1, 2, 3]):
        item = ds[row]
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        expect = torch.from_numpy(decoded(imgs[key])).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(item["image"], expect)
        assert item["label"].dtype == torch.int64 and int(item["label"]) == ds.labels[row]
        assert int(item["index"]) == row


def test_im2rec_shuffled_no_header_no_property(tmp_path):
    imgs = [jpeg(10 + k) for k in range(4)]
    labels = [2.0, 0.0, 3.0, 1.0]
    recs = [(k, record(irheader(0, labels[k]) + imgs[k])) for k in range(4)]
    recs[3] = (3, record(irheader(1, 0.0) + floats(1.0) + imgs[3]))  # im2rec label_width=1 style vector
    write_files(tmp_path, recs, idx_order=[2, 0, 3, 1])
    ds = RecordIODataset(tmp_path / "train")  # a path stem works too
    assert ds.header is None and ds.keys.tolist() == [2, 0, 3, 1]
    assert ds.labels.tolist() == [3, 2, 1, 0] and ds.num_classes == 4 and ds.image_size == SIZE
    np.testing.assert_array_equal(
        ((ds[0]["image"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy(), decoded(imgs[2])
    )


def test_property_mismatch_is_an_error(tmp_path):
    recs, _, _ = insightface_layout(tmp_path)
    write_files(tmp_path, recs, prop="5,8,8\n")
    with pytest.raises(ValueError, match="property: num_classes 5 disagrees"):
        RecordIODataset(tmp_path)


def corrupt(tmp_path, at_key: int, how: str):
    recs, _imgs, _ = insightface_layout(tmp_path)
    offsets = write_files(tmp_path, recs, prop="2,8,8\n")
    rec = bytearray((tmp_path / "train.rec").read_bytes())
    off = offsets[at_key]
    if how == "magic":
        rec[off : off + 4] = b"\xde\xad\xbe\xef"
    elif how == "legacy":
        rec[off : off + 4] = struct.pack("<I", 0x3ED7230A)
    elif how == "jpeg":
        start = off + 8 + 24 + (8 if at_key == 2 else 0)
        rec[start : start + 16] = b"\x00" * 16  # destroys the SOI marker and headers
    (tmp_path / "train.rec").write_bytes(bytes(rec))
    return off


def test_bad_magic_raises_naming_file_key_offset(tmp_path):
    off = corrupt(tmp_path, 2, "magic")
    with pytest.raises(RecordIOError, match=rf"train.rec: key 2 at byte offset {off}: bad magic 0xEFBEADDE"):
        RecordIODataset(tmp_path)


def test_legacy_magic_explained(tmp_path):
    corrupt(tmp_path, 1, "legacy")
    with pytest.raises(RecordIOError, match="pre-2015 dmlc"):
        RecordIODataset(tmp_path)


def test_bad_magic_skip_counts_and_warns(tmp_path):
    corrupt(tmp_path, 2, "magic")
    with pytest.warns(UserWarning, match="skipped 1 malformed"):
        ds = RecordIODataset(tmp_path, on_error="skip")
    assert ds.keys.tolist() == [1, 3] and ds.labels.tolist() == [0, 1]
    assert [s[0] for s in ds.skipped] == [2]


def test_truncated_record(tmp_path):
    recs, _, _ = insightface_layout(tmp_path)
    recs = recs[:2]  # header + key 1 only; then cut key 1 short
    (tmp_path / "x").mkdir()
    d = tmp_path / "x"
    offsets = write_files(d, [(0, recs[0][1]), (1, recs[1][1])])
    (d / "train.idx").write_text(f"0\t0\n1\t{offsets[1]}\n")
    rec = (d / "train.rec").read_bytes()
    (d / "train.rec").write_bytes(rec[:-10])
    # header [4, 6] needs keys 1..3 in the index: rewrite the header to [2, 3]
    rec = bytearray((d / "train.rec").read_bytes())
    rec[8 + 24 : 8 + 32] = floats(2.0, 3.0)
    (d / "train.rec").write_bytes(bytes(rec))
    with pytest.raises(RecordIOError, match=rf"key 1 at byte offset {offsets[1]}: truncated record"):
        RecordIODataset(d)


def test_bad_jpeg_raise_and_skip(tmp_path):
    off = corrupt(tmp_path, 2, "jpeg")
    ds = RecordIODataset(tmp_path)  # labels come from headers: opening does not decode
    assert ds.labels.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match=rf"key 2 at byte offset {off}: cannot decode image"):
        ds[1]
    ds = RecordIODataset(tmp_path, on_error="skip")
    with pytest.warns(UserWarning, match="skipped"):
        item = ds[1]
    assert int(item["index"]) == 2 and [s[0] for s in ds.skipped] == [2]
    assert [b[0] for b in ds.verify()] == [2]


def test_frame_record_splits_like_dmlc():
    payload = b"ab" + b"cdef" * 1 + b"\x0a\x23\xd7\xce" + b"xy"  # magic at offset 6: not aligned → no split
    assert frame_record(payload)[4:8] == struct.pack("<I", len(payload))
    payload = b"abcd" + struct.pack("<I", MAGIC) + b"efgh" + struct.pack("<I", MAGIC) + b"ij"
    framed = frame_record(payload)
    expect = head(1, 4) + b"abcd" + head(2, 4) + b"efgh" + head(3, 2) + b"ij" + b"\0\0"
    assert framed == expect


def test_writer_roundtrip_header_and_multipart(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(5)]
    items = [(arrays[0], 0), (jpeg(7), 0), (arrays[2], 2), (arrays[3], 2), (arrays[4], 3)]
    out = write_recordio(items, f"{tmp_path}/out/", quality=90)
    assert out["num_images"] == 5 and out["num_classes"] == 4
    assert (tmp_path / "out" / "property").read_text() == "4,8,8\n5\n"
    ds = RecordIODataset(tmp_path / "out")
    assert ds.header == (6, 10) and ds.labels.tolist() == [0, 0, 2, 2, 3] and ds.num_classes == 4
    # identity records hold the key ranges; class 1 has none
    lines = (tmp_path / "out" / "train.idx").read_text().split()
    key_off = dict(zip(map(int, lines[0::2]), map(int, lines[1::2])))
    ranges = [unpack_payload(ds.reader.read(key_off[k]))[0].labels.tolist() for k in range(6, 10)]
    assert ranges == [[1, 3], [6, 6], [3, 5], [5, 6]]
    assert np.array_equal(ds.load_image(1), decoded(jpeg(7)))  # bytes stored as given
    ref = io.BytesIO()
    Image.fromarray(arrays[0]).save(ref, format="JPEG", quality=90)
    assert np.array_equal(ds.load_image(0), decoded(ref.getvalue()))  # arrays are JPEG-encoded at `quality`

    with pytest.raises(ValueError, match="label 0 appears again"):
        write_recordio([(jpeg(1), 0), (jpeg(2), 1), (jpeg(3), 0)], f"{tmp_path}/bad/")


def test_writer_no_header_and_multipart_payload(tmp_path):
    # an image payload with the magic at a 4-aligned offset: put it into the JPEG's trailing bytes
    data = jpeg(5)
    data = data + b"\0" * (-(24 + len(data)) % 4) + struct.pack("<I", MAGIC) + b"tail"
    write_recordio([(data, 1), (jpeg(6), 0)], tmp_path / "plain", with_header=False)
    assert (tmp_path / "plain.rec").read_bytes().count(struct.pack("<I", (1 << 29) | (len(data) + 24 - 8))) == 1
    ds = RecordIODataset(tmp_path / "plain")
    assert ds.header is None and ds.labels.tolist() == [1, 0] and ds.num_classes == 2
    assert unpack_payload(ds.reader.read(int(ds.offsets[0])))[1] == data


def test_one_handle_per_worker(tmp_path):
    recs, _, _ = insightface_layout(tmp_path)
    write_files(tmp_path, recs, prop="2,8,8\n3\n")
    ds = RecordIODataset(tmp_path)
    first = ds[0]["image"]
    assert ds.reader._fd is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.reader._fd is None
    torch.testing.assert_close(clone[0]["image"], first)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context="fork")
    batch = next(iter(loader))
    torch.testing.assert_close(batch["image"][0], first)
    assert batch["label"].tolist() == [0, 1, 1]


def test_cli_pack_and_inspect(tmp_path):
    import typer
    from typer.testing import CliRunner

    from facekd.data.commands import register

    for name, seed in (("b/1.jpg", 1), ("a/1.jpg", 2), ("a/2.jpg", 3)):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(jpeg(seed))
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "src" / "b" / "2.png")
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["pack-rec", str(tmp_path / "src"), f"{tmp_path}/rec/", "--image-size", "8"])
    assert res.exit_code == 0, res.output
    assert "wrote 4 images of 2 classes (8x8)" in res.output
    ds = RecordIODataset(tmp_path / "rec")
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds._encoded(0)[0] == jpeg(2)  # JPEGs of the right size pass through unchanged
    assert ds.load_image(3).shape == (8, 8, 3)  # the 12x12 PNG was resized and encoded
    with pytest.warns(UserWarning, match="preset ms1mv2 expects"):
        res = runner.invoke(app, ["inspect-rec", str(tmp_path / "rec"), "--verify", "--preset", "ms1mv2"])
    assert res.exit_code == 0, res.output
    assert "header record 0 = [A=5, B=7]" in res.output and "0 undecodable" in res.output
    assert "preset ms1mv2: " in res.output and "expects 85742" in res.output


def packed(tmp_path, with_header=True):
    """6 images of 3 classes packed by write_recordio; returns {key: offset}."""
    write_recordio([(jpeg(k), k // 2) for k in range(6)], f"{tmp_path}/", with_header=with_header)
    lines = (tmp_path / "train.idx").read_text().split()
    return dict(zip(map(int, lines[0::2]), map(int, lines[1::2])))


def poke(path, at: int, data: bytes):
    b = bytearray(path.read_bytes())
    b[at : at + len(data)] = data
    path.write_bytes(bytes(b))


def test_fractional_label_raises_or_is_skipped_and_counted(tmp_path):
    off = packed(tmp_path)
    poke(tmp_path / "train.rec", off[3] + 12, floats(1.5))  # the scalar label of key 3
    (tmp_path / "property").write_text("3,8,8\n")
    with pytest.raises(RecordIOError, match=rf"key 3 at byte offset {off[3]}: label 1.5 is not a class id"):
        RecordIODataset(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 malformed"):
        ds = RecordIODataset(tmp_path, on_error="skip")
    assert ds.keys.tolist() == [1, 2, 4, 5, 6] and [s[0] for s in ds.skipped] == [3]


def test_header_labels_that_are_not_key_counts_are_refused_at_once(tmp_path):
    packed(tmp_path)
    for a, b in ((float("inf"), 9.0), (3e38, 3e38), (2.5, 9.0), (7.0, 5.0)):
        poke(tmp_path / "train.rec", 32, floats(a, b))
        with pytest.raises(RecordIOError, match="key 0 at byte offset 0: header record label"):
            RecordIODataset(tmp_path)


def test_identity_records_are_checked_against_labels_and_each_other(tmp_path):
    off = packed(tmp_path)  # images at keys 1..6, identity records at keys 7, 8, 9: [1, 3), [3, 5), [5, 7)
    poke(tmp_path / "train.rec", off[8] + 32, floats(2.0))  # class 1 now claims [2, 5)
    with pytest.raises(ValueError, match=r"classes 0 \(keys \[1, 3\)\) and 1 \(keys \[2, 5\)\) overlap"):
        RecordIODataset(tmp_path)
    poke(tmp_path / "train.rec", off[8] + 32, floats(3.0))
    poke(tmp_path / "train.rec", off[5] + 12, floats(1.0))  # key 5 is in class 2's range
    with pytest.raises(RecordIOError, match="key 5 .* label 1, but the identity records give key 5 to class 2"):
        RecordIODataset(tmp_path)


@pytest.mark.parametrize("with_header,cut", [(True, 3), (False, 1)])
def test_records_missing_from_a_cut_index_are_detected(tmp_path, with_header, cut):
    packed(tmp_path, with_header)
    lines = (tmp_path / "train.idx").read_text().splitlines(keepends=True)
    (tmp_path / "train.idx").write_text("".join(lines[:-cut]))  # cut at a line boundary
    (tmp_path / "property").unlink()
    with pytest.raises(ValueError, match=r"train.rec: \d+ byte\(s\) are not covered by any record of .*train.idx"):
        RecordIODataset(tmp_path)
    with pytest.warns(UserWarning, match="not covered by any record"):
        RecordIODataset(tmp_path, on_error="skip")


def test_property_problems_name_the_property_file(tmp_path):
    packed(tmp_path)
    (tmp_path / "property").write_bytes(b"3,16,16\n6\n")
    with pytest.raises(ValueError, match=r"property: says images are 16x16, but the first image \(.*key 1.*\) is 8x8"):
        RecordIODataset(tmp_path)
    assert RecordIODataset(tmp_path, image_size=16, resize=True)[0]["image"].shape == (3, 16, 16)
    (tmp_path / "property").write_bytes("3,8,8\n6\n".encode("utf-16"))
    with pytest.raises(ValueError, match="property: expected 'num_classes,height,width'.* non-ASCII byte 0xff"):
        RecordIODataset(tmp_path)


def test_verify_reports_corrupt_jpeg_entropy_data_that_pil_decodes(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64
    img = np.clip(np.stack([128 + 90 * np.sin(3 * c * xx + 2 * yy) for c in (1, 2, 3)], -1), 0, 255)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    good = buf.getvalue()
    import simplejpeg

    sos = good.find(b"\xff\xda")
    for pos in range(sos + 40, len(good) - 8, 5):  # a change of entropy-coded data that PIL decodes silently
        bad = bytearray(good)
        bad[pos] ^= 0x5A
        try:
            simplejpeg.decode_jpeg(bytes(bad), strict=True)
        except ValueError:
            if not np.array_equal(decoded(bytes(bad)), decoded(good)):
                break
    else:
        raise AssertionError("no silently mis-decoded corruption found")
    write_recordio([(good, 0), (bytes(bad), 0)], f"{tmp_path}/", with_header=False)
    ds = RecordIODataset(tmp_path)
    assert ds.load_image(1).shape == (64, 64, 3)  # training reads it
    assert [(key, "corrupt JPEG data" in why) for key, _, why in ds.verify()] == [(1, True)]


def test_packed_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        write_recordio([(jpeg(1), 0)], f"{tmp_path}/rec/")
    finally:
        os.umask(old)
    for name in ("train.rec", "train.idx", "property"):
        assert stat.S_IMODE((tmp_path / "rec" / name).stat().st_mode) == 0o644  # group and others can read
