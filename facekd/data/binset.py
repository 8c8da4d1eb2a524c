"""InsightFace verification sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, …) read without trusting pickle.

Format (insightface `recognition/arcface_torch/eval/verification.py::load_bin`,
`recognition/arcface_mxnet/common/build_eval_pack.py`): a pickled pair `(bins, issame_list)`;
`bins` holds 2N encoded JPEGs (entries 2i and 2i+1 are pair i) as `bytes` (the Python 2 files:
`str`) or 1-D numpy uint8 arrays (the `cv2.imencode` output of build_eval_pack); `issame_list`
holds N bools.

A `.bin` is a pickle, and unpickling runs whatever callables the file names. `load_bin` uses
`RestrictedUnpickler`, which resolves only the handful of globals this format needs (numpy array
and dtype reconstruction, restricted to uint8 / bool data, and `_codecs.encode` with latin-1, which
protocol-2 pickles use for bytes) and refuses any other global *before* it could be called. The
opcode stream is walked once first (`pickletools.genops`), so that a length field asking for more
bytes than the file holds (e.g. 2^60) is refused before the unpickler would allocate them; any
other failure of a damaged file is a ValueError naming it.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np

from facekd.data.images import decode_image, encode_jpeg, resize_rgb
from facekd.utils import atomic_path

_ALLOWED_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_))


def _checked_dtype(obj, *args) -> np.dtype:
    if isinstance(obj, bytes):
        obj = obj.decode("ascii")
    dt = obj if isinstance(obj, np.dtype) else np.dtype(obj)
    if dt not in _ALLOWED_DTYPES:
        raise pickle.UnpicklingError(f"numpy dtype {dt} refused (a .bin holds only uint8 / bool arrays)")
    return np.dtype(dt)  # a fresh instance: numpy's dtype reduce calls __setstate__ on the result


class _NdarrayName:
    """What the global `numpy.ndarray` resolves to: a name `_reconstruct` accepts as its subtype,
    not the class itself (calling the class would allocate arrays of any shape)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayName()


def _reconstruct(subtype, shape, dtype):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by __setstate__ with the
    # real dtype, which can only come from the checked `numpy.dtype` global.
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} refused (only numpy.ndarray)")
    return np.ndarray.__new__(np.ndarray, (0,), np.int8)


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=_checked_dtype(dtype)).reshape(shape, order=order).copy()


def _scalar(dtype, data=None):
    dt = _checked_dtype(dtype)
    return np.frombuffer(data, dtype=dt, count=1)[0] if data is not None else dt.type(0)


def _latin1_encode(text, encoding="latin1"):
    if str(encoding).lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused (only latin-1)")
    return text.encode("latin1")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_SAFE_GLOBALS = {
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _scalar for m in _NUMPY_MODULES},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _checked_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals of `_SAFE_GLOBALS` (checked wrappers, not the
    originals); any other global raises UnpicklingError naming the file and the global, before it
    is looked up, so nothing it names is imported or called."""

    def __init__(self, file, source: str, **kw):
        super().__init__(file, **kw)
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self.source}: refused to load global {module}.{name}: a verification .bin holds only "
                "(bins, issame) with bytes / uint8 arrays and bools; this file may be malicious"
            ) from None


def restricted_loads(data: bytes, source: str):
    """Unpickle `data` with RestrictedUnpickler; Python 2 pickles (str entries) fall back to encoding='bytes'.

    The opcodes are walked first, so that declared lengths are checked against the data before
    anything is allocated. Raises ValueError naming `source` for any malformed stream."""
    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
        try:
            return RestrictedUnpickler(io.BytesIO(data), source).load()
        except UnicodeDecodeError:
            return RestrictedUnpickler(io.BytesIO(data), source, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith(f"{source}: "):  # a refused global: the message already says so
            raise ValueError(str(e)) from None
        raise ValueError(f"{source}: not a verification .bin ({_one_line(e)})") from None
    except Exception as e:  # a damaged stream fails in many ways (stack, memo, types); all mean "not a .bin"
        raise ValueError(f"{source}: not a verification .bin ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """A `.bin` file → (2N encoded images as bytes, issame bool (N,)), structure-checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set {path} does not exist")
    obj = restricted_loads(path.read_bytes(), str(path))
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a pickled pair (bins, issame_list), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(issame, (list, tuple, np.ndarray)):
        raise ValueError(f"{path}: issame_list is a {type(issame).__name__}, expected a list of bools")
    if isinstance(issame, np.ndarray) and (issame.dtype != np.bool_ or issame.ndim != 1):
        raise ValueError(f"{path}: issame_list is a {issame.dtype} array of shape {issame.shape}, expected 1-D bools")
    for j, v in enumerate(issame):
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{path}: issame_list[{j}] is {_short(v)} ({type(v).__name__}), expected a bool")
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    if len(issame) == 0:
        raise ValueError(f"{path}: issame_list is empty; expected at least one pair")
    if not isinstance(bins, (list, tuple)) or len(bins) != 2 * len(issame):
        n = len(bins) if isinstance(bins, (list, tuple)) else type(bins).__name__
        raise ValueError(f"{path}: expected 2 x {len(issame)} = {2 * len(issame)} images in bins, got {n}")
    out = []
    for j, b in enumerate(bins):
        if isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.ndim == 1:
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise ValueError(f"{path}: bins[{j}] is a {type(b).__name__}, expected JPEG bytes or a uint8 array")
        out.append(bytes(b))
    return out, issame


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def load_bin(path: str | os.PathLike, image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """A `.bin` verification set → (images uint8 (2N, H, W, 3) RGB, issame bool (N,)).

    Images are decoded with PIL (RGB, as mx.image.imdecode) and, when not already
    image_size × image_size, resized to it with PIL bilinear (insightface resizes the short side;
    the released sets are all 112 × 112, where both agree). Pair i is images 2i and 2i+1.
    """
    bins, issame = read_bin(path)
    images = np.empty((len(bins), image_size, image_size, 3), dtype=np.uint8)
    for j, b in enumerate(bins):
        images[j] = resize_rgb(decode_image(b, f"{path}: image {j} (pair {j // 2})"), (image_size, image_size))
    return images, issame


def write_bin(images, issame, path: str | os.PathLike, quality: int = 95) -> None:
    """Write a `.bin` verification set atomically: images uint8 (2N, H, W, 3) (JPEG-encoded at
    `quality`) or a list of 2N encoded bytes, issame (N,) bools. Entries are stored as `bytes`
    (pickle protocol 4), which both insightface's load_bin and `load_bin` read."""
    issame = [bool(v) for v in np.asarray(issame).reshape(-1)]
    bins = [bytes(im) if isinstance(im, (bytes, bytearray)) else encode_jpeg(np.asarray(im), quality) for im in images]
    if len(bins) != 2 * len(issame):
        raise ValueError(f"write_bin: {len(bins)} images for {len(issame)} pairs; expected {2 * len(issame)}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps((bins, issame), protocol=4))
