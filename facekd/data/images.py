"""Encoded images (JPEG, PNG, …) to and from uint8 RGB arrays, guarded against hostile files.

Every reader in `facekd.data` decodes through `decode_image`, which reads the declared size from
the image header first and refuses an image above `MAX_IMAGE_PIXELS` before any pixel is decoded
(a 69-byte PNG can declare 60000 × 60000 pixels). Any decoder failure becomes a ValueError naming
the source. `verify_image` decodes strictly: besides PIL's errors it reports the "corrupt data"
warnings of libjpeg-turbo (through simplejpeg), which PIL ignores while decoding such a JPEG to
wrong pixels. Corruption that still forms a valid entropy-coded stream cannot be detected by any
decoder; see docs/data-formats.md for the measured rate.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image

MAX_IMAGE_PIXELS = 1 << 26  # 67M pixels, e.g. 8192 × 8192: far above any face or re-ID image


def _open(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """PIL image with only its header parsed; refuses undecodable headers and oversized images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own, larger limit
        declared = re.search(r"\((\d+) pixels\)", str(e))
        count = f"{declared.group(1)} pixels" if declared else "an image size"
        raise ValueError(f"{where}: image header declares {count}, {_too_many(max_pixels)}") from None
    except Exception as e:  # PIL raises many types for hostile headers; all mean "not an image"
        raise ValueError(f"{where}: cannot decode image ({len(data)} bytes): {_reason(e)}") from None
    w, h = im.size
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise ValueError(f"{where}: image header declares {w}x{h} pixels, {_too_many(max_pixels)}")
    return im


def _too_many(max_pixels: int) -> str:
    return f"more than the {max_pixels} pixels an image may have (a corrupt or hostile file)"


def _reason(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def image_size(data: bytes, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(height, width) from the header alone; ValueError naming `where` when not a (sane) image."""
    w, h = _open(bytes(data), where, max_pixels).size
    return h, w


def decode_image(data: bytes | np.ndarray, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, …) → uint8 (H, W, 3) RGB, decoded with PIL.

    `where` names the source (file, key, offset) in the ValueError raised on undecodable data or
    on a header declaring more than `max_pixels` pixels.
    """
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    im = _open(data, where, max_pixels)
    try:
        with im, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return np.array(im.convert("RGB"))
    except Exception as e:  # truncated / corrupt pixel data; PIL's types vary by plugin
        raise ValueError(f"{where}: cannot decode image ({len(data)} bytes): {_reason(e)}") from None


def verify_image(data: bytes, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """`decode_image`, then for a JPEG also a strict libjpeg-turbo decode that turns its "corrupt
    JPEG data" warnings into a ValueError naming `where`."""
    img = decode_image(data, where, max_pixels)
    if bytes(data[:2]) == b"\xff\xd8":
        import simplejpeg

        try:
            simplejpeg.decode_jpeg(bytes(data), colorspace="RGB", strict=True)
        except ValueError as e:
            raise ValueError(f"{where}: corrupt JPEG data ({' '.join(str(e).split())})") from None
    return img


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (size[0], size[1], 3), PIL bilinear (no-op when already that size)."""
    if img.shape[:2] == tuple(size):
        return img
    return np.array(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """uint8 (H, W, 3) RGB → JPEG bytes (PIL, 4:2:0 like OpenCV's default)."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {img.dtype} {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
