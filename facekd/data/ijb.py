"""IJB-B / IJB-C 1:1 release files and 5-point face alignment to the ArcFace template.

Layout (insightface `recognition/arcface_torch/eval_ijbc.py`), `<t>` = `ijbb` or `ijbc`:

    <root>/meta/<t>_face_tid_mid.txt         image_name template_id media_id        (one row per face)
    <root>/meta/<t>_template_pair_label.txt  template_id_1 template_id_2 label    (1 genuine, 0 impostor)
    <root>/meta/<t>_name_5pts_score.txt      image_name x1 y1 … x5 y5 faceness    (rows match tid_mid)
    <root>/loose_crop/<image_name>

Alignment: the least-squares similarity (Umeyama 1991, what skimage's SimilarityTransform
estimates) from the 5 landmarks to `arcface_template(size)`, then `cv2.warpAffine` (bilinear,
border 0), as insightface's `norm_crop`. Template pooling and scoring live in
`facekd.evaluate.ijb`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import cast

import cv2
import numpy as np
import torch

from facekd.data.folder import EncodedImageDataset, Transform, decode_image

#: insightface `face_align.arcface_dst`: left eye, right eye, nose tip, left/right mouth corner, 112×112.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def arcface_template(image_size: int = 112) -> np.ndarray:
    """The 5-point template for an output of image_size × image_size, as insightface's estimate_norm:
    scaled by image_size/112 when image_size is a multiple of 112, else by image_size/128 with +8·ratio in x."""
    if image_size % 112 == 0:
        ratio, dx = image_size / 112.0, 0.0
    else:
        ratio = image_size / 128.0
        dx = 8.0 * ratio
    dst = ARCFACE_DST * ratio
    dst[:, 0] += dx
    return dst


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (scale, rotation, translation; no reflection) mapping src → dst.

    src, dst: (n, 2) point sets, n >= 2. Returns M (2, 3) float64 with dst ≈ M[:, :2] @ p + M[:, 2].
    Umeyama's closed form (IEEE TPAMI 13(4), 1991, Eq. 40–42).
    """
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(
            f"similarity_transform: need two (n, 2) point sets with n >= 2, got {src.shape} and {dst.shape}"
        )
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / len(src)
    if var_s == 0:
        raise ValueError("similarity_transform: all source points coincide")
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.array([1.0, -1.0 if np.linalg.det(cov) < 0 else 1.0])
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / var_s
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def warp_affine(img: np.ndarray, m: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Warp uint8 (H, W[, C]) by the affine map m (2, 3) (source pixel → output pixel coordinates).

    `cv2.warpAffine` with bilinear interpolation and a constant 0 border, as insightface aligns:
    each output pixel (x, y) samples the source at m⁻¹(x, y), pixel centres at integer coordinates,
    neighbours outside the source count as 0. Returns uint8 (out_shape[0], out_shape[1][, C]).
    OpenCV ≥ 5 stays within one grey level of the exact bilinear warp; 4.x, with its 1/32-pixel
    fixed-point coordinates, differs by up to 4 levels at the crop's edges.
    """
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = out_shape
    out = cv2.warpAffine(
        img,
        np.asarray(m, dtype=np.float64),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return out.reshape(h, w, *img.shape[2:])


def norm_crop(img: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Align a face: uint8 (H, W, 3) image + (5, 2) landmarks (x, y in pixels) → uint8 (S, S, 3)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    return warp_affine(img, similarity_transform(lm, arcface_template(image_size)), (image_size, image_size))


def _lines(path: Path, nfields: int, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file {path} does not exist")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {e.start}: {e.reason})") from None
            fields = line.split()
            if not fields:
                continue
            if len(fields) != nfields:
                raise ValueError(
                    f"{path}:{lineno}: expected {nfields} fields ({what}), got {len(fields)}: {line.rstrip()!r}"
                )
            yield lineno, fields


def _check_image_name(path: Path, lineno: int, name: str) -> None:
    """Refuse an image name that would leave `loose_crop/`: absolute, with a drive, or with `..`."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in windows.parts:
        raise ValueError(
            f"{path}:{lineno}: image name {name!r} points outside loose_crop/ "
            "(expected a relative path inside it, without '..' or a drive)"
        )


def read_face_tid_mid(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<t>_face_tid_mid.txt` → (image names (N,) str, template ids int64 (N,), media ids int64 (N,))."""
    path = Path(path)
    names, tids, mids = [], [], []
    for lineno, (name, t, m) in _lines(path, 3, "image_name template_id media_id"):
        try:
            tids.append(int(t))
            mids.append(int(m))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: template id {t!r} / media id {m!r} must be integers") from None
        _check_image_name(path, lineno, name)
        names.append(name)
    if not names:
        raise ValueError(f"{path}: no rows")
    return np.asarray(names), np.asarray(tids, dtype=np.int64), np.asarray(mids, dtype=np.int64)


def read_template_pair_label(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<t>_template_pair_label.txt` → (t1, t2, label) int64 (P,) each; label 1 genuine, 0 impostor.

    Parsed with numpy's C reader (IJB-C has 15.7M lines).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file {path} does not exist")
    try:
        arr = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: expected lines of three integers 'tid1 tid2 label': {e}") from None
    if arr.shape[0] == 0 or arr.shape[1] != 3:
        raise ValueError(f"{path}: expected lines of three integers 'tid1 tid2 label', got shape {arr.shape}")
    bad = np.flatnonzero((arr[:, 2] != 0) & (arr[:, 2] != 1))
    if bad.size:
        raise ValueError(f"{path}: line {bad[0] + 1}: label {arr[bad[0], 2]} is not 0 or 1")
    return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


def read_5pts_score(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<t>_name_5pts_score.txt` → (names (N,) str, landmarks float32 (N, 5, 2), faceness float32 (N,))."""
    path = Path(path)
    names, values = [], []
    for lineno, fields in _lines(path, 12, "image_name x1 y1 ... x5 y5 faceness_score"):
        try:
            values.append([float(v) for v in fields[1:]])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: landmark / score fields must be numbers: {fields[1:]}") from None
        _check_image_name(path, lineno, fields[0])
        names.append(fields[0])
    if not names:
        raise ValueError(f"{path}: no rows")
    v = np.asarray(values, dtype=np.float32)
    return np.asarray(names), v[:, :10].reshape(-1, 5, 2), v[:, 10].copy()


@dataclass
class IJBMeta:
    """The three meta files of one target, row-aligned: row i of names/templates/medias/landmarks/faceness."""

    names: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    faceness: np.ndarray
    pairs_t1: np.ndarray
    pairs_t2: np.ndarray
    pairs_label: np.ndarray


def meta_paths(root: str | os.PathLike, target: str = "IJBC") -> dict[str, Path]:
    """Paths of the meta files of `target` (IJBB or IJBC) under root/meta/."""
    t = target.lower()
    if t not in ("ijbb", "ijbc"):
        raise ValueError(f"target must be IJBB or IJBC, got {target!r}")
    meta = Path(root) / "meta"
    return {
        "tid_mid": meta / f"{t}_face_tid_mid.txt",
        "pairs": meta / f"{t}_template_pair_label.txt",
        "5pts": meta / f"{t}_name_5pts_score.txt",
    }


def read_ijb_meta(root: str | os.PathLike, target: str = "IJBC") -> IJBMeta:
    """Read and cross-check the meta files of one IJB target (names must match row by row)."""
    p = meta_paths(root, target)
    names, tids, mids = read_face_tid_mid(p["tid_mid"])
    names5, landmarks, faceness = read_5pts_score(p["5pts"])
    if len(names5) != len(names):
        raise ValueError(
            f"{p['5pts']}: {len(names5)} rows, {p['tid_mid']} has {len(names)}; they must match row by row"
        )
    diff = np.flatnonzero(names5 != names)
    if diff.size:
        i = int(diff[0])
        raise ValueError(
            f"{p['5pts']}:{i + 1}: image {str(names5[i])!r} but {p['tid_mid']}:{i + 1} has {str(names[i])!r}"
        )
    t1, t2, label = read_template_pair_label(p["pairs"])
    unknown = np.setdiff1d(np.union1d(t1, t2), tids)
    if unknown.size:
        raise ValueError(f"{p['pairs']}: template ids {unknown[:5].tolist()} do not occur in {p['tid_mid']}")
    return IJBMeta(names, tids, mids, landmarks, faceness, t1, t2, label)


class IJBDataset(EncodedImageDataset):
    """The faces of an IJB-B/C release, aligned to the ArcFace template, one row per meta row.

    Item: the contract's dict (image aligned to image_size, label = template id, index = row);
    with flip=True also "image_flip" (the same face mirrored, for insightface's flip-sum).
    Attributes: `meta` (IJBMeta: templates, medias, faceness, landmarks, template pairs), `labels`
    (= meta.templates), `num_classes` (max template id + 1, only to satisfy the contract).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        target: str = "IJBC",
        image_size: int = 112,
        transform: Transform | None = None,
        flip: bool = False,
    ):
        self.root = Path(root)
        self.target = target
        self.meta = read_ijb_meta(root, target)
        self.image_dir = self.root / "loose_crop"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"IJB images folder {self.image_dir} does not exist")
        self.labels = self.meta.templates
        self.num_classes = int(self.labels.max()) + 1
        self.flip = flip
        super().__init__(image_size, transform)

    def _encoded(self, i: int) -> tuple[bytes, str]:
        path = self.image_dir / str(self.meta.names[i])
        where = f"{path} (row {i + 1} of {meta_paths(self.root, self.target)['tid_mid'].name})"
        try:
            return path.read_bytes(), where
        except OSError as e:
            raise FileNotFoundError(f"{where}: cannot read image: {e}") from e

    def load_image(self, i: int) -> np.ndarray:
        """Row i's loose crop, aligned by its 5 landmarks: uint8 (S, S, 3)."""
        data, where = self._encoded(i)
        return norm_crop(decode_image(data, where), self.meta.landmarks[i], cast(int, self.image_size))

    def _item(self, i: int, img: np.ndarray) -> dict:
        item = super()._item(i, img)
        if self.flip:
            item["image_flip"] = torch.flip(item["image"], dims=(-1,))
        return item

    def _fingerprint_parts(self) -> list[str]:
        return [
            f"{k}:{hashlib.sha1(p.read_bytes()).hexdigest()}" for k, p in meta_paths(self.root, self.target).items()
        ]
