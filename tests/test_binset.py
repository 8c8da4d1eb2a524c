"""Verification `.bin` sets: Python-2 byte-level pickles, numpy-array pickles, malicious pickles."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from facekd.data.binset import load_bin, read_bin, write_bin


def jpeg(seed: int, size: int = 8) -> bytes:
    img = np.full((size, size, 3), seed * 20 % 256, dtype=np.uint8)
    img[: size // 2, :, 0] = 255 - seed
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def py2_string(data: bytes) -> bytes:
    """Python 2 `str` in a protocol-2 pickle: SHORT_BINSTRING (U) or BINSTRING (T)."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def py2_bin(entries: list[bytes], issame: list[bool]) -> bytes:
    """The byte stream Python 2's cPickle.dump((bins, issame), f, protocol=2) produces."""
    out = b"\x80\x02"  # PROTO 2
    out += b"](" + b"".join(py2_string(e) for e in entries) + b"e"  # EMPTY_LIST MARK … APPENDS
    out += b"](" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e"  # NEWTRUE / NEWFALSE
    return out + b"\x86."  # TUPLE2 STOP


def test_python2_style_bin_falls_back_to_bytes(tmp_path):
    png = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 77, dtype=np.uint8)).save(png, format="PNG")
    entries = [jpeg(k) for k in range(3)] + [png.getvalue()]  # JPEGs need BINSTRING, the PNG SHORT_BINSTRING
    assert len(entries[3]) < 256 < len(entries[0])
    path = tmp_path / "lfw.bin"
    path.write_bytes(py2_bin(entries, [True, False]))
    with pytest.raises(UnicodeDecodeError):  # the plain load fails, as in insightface
        pickle.loads(path.read_bytes())
    images, issame = load_bin(path, image_size=8)
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
    assert issame.dtype == bool and issame.tolist() == [True, False]
    for k in range(4):
        np.testing.assert_array_equal(images[k], decoded(entries[k]))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_array_entries(tmp_path, protocol):
    """build_eval_pack stores cv2.imencode outputs: 1-D uint8 arrays."""
    entries = [np.frombuffer(jpeg(k), dtype=np.uint8) for k in range(2)]
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(pickle.dumps((entries, [np.bool_(True)]), protocol=protocol))
    images, issame = load_bin(path, image_size=8)
    np.testing.assert_array_equal(images[1], decoded(jpeg(1)))
    assert issame.tolist() == [True]


def test_resize_to_image_size(tmp_path):
    path = tmp_path / "cfp_fp.bin"
    write_bin([jpeg(1, 16), jpeg(2, 16)], [False], path)
    images, _ = load_bin(path, image_size=8)
    assert images.shape == (2, 8, 8, 3)


def test_write_bin_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    write_bin(imgs, np.array([True, False]), tmp_path / "x.bin")
    bins, issame = read_bin(tmp_path / "x.bin")
    assert len(bins) == 4 and issame.tolist() == [True, False]
    assert pickle.loads((tmp_path / "x.bin").read_bytes())[1] == [True, False]  # plain pickle agrees
    with pytest.raises(ValueError, match="3 images for 2 pairs"):
        write_bin(imgs[:3], [True, False], tmp_path / "y.bin")


class Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_global_refused_before_running(tmp_path):
    sentinel = tmp_path / "pwned"
    cmd = f"touch {sentinel}".encode()
    # byte level: GLOBAL 'os system', a string argument, TUPLE1, REDUCE
    raw = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."
    path = tmp_path / "evil.bin"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=r"evil.bin.*refused to load global os.system"):
        load_bin(path)
    # the same hidden inside an otherwise valid structure, written by pickle itself
    path2 = tmp_path / "evil2.bin"
    path2.write_bytes(pickle.dumps(([jpeg(1), Evil(f"touch {sentinel}")], [True]), protocol=4))
    with pytest.raises(ValueError, match=r"evil2.bin.*refused to load global (posix|os)\.system"):
        load_bin(path2)
    assert not sentinel.exists()


def test_refuses_other_numpy_dtypes_and_codecs(tmp_path):
    path = tmp_path / "obj.bin"
    path.write_bytes(pickle.dumps(([np.array([b"a"], dtype=object)] * 2, [True]), protocol=2))
    with pytest.raises(ValueError, match="dtype object refused"):
        read_bin(path)
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(ValueError, match="encoding 'zlib' refused"):
        read_bin(path)


def test_structure_errors(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(([jpeg(1)] * 3, [True, False])))
    with pytest.raises(ValueError, match=r"bad.bin: expected 2 x 2 = 4 images in bins, got 3"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([jpeg(1)] * 2, [1])))
    with pytest.raises(ValueError, match=r"issame_list\[0\] is 1"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([jpeg(1), b"not a jpeg"], [True])))
    with pytest.raises(ValueError, match=r"bad.bin: image 1 \(pair 0\): cannot decode"):
        load_bin(path, image_size=8)
    path.write_bytes(b"\x80\x02]q")
    with pytest.raises(ValueError, match="not a verification .bin"):
        read_bin(path)
