"""SynthFaces: procedurally rendered face-like RGB images, biased the way MS1MV3 is.

The data-bias paper (papers/data-bias-uniformity-sampling.txt, §1 and §3.1) describes MS1MV3:
identity sizes range from 2 to more than 200 images, and "clear front face images dominate the
dataset while images with large pose are rare". SynthFaces reproduces both biases, small enough to
train on two CPU cores:

* identities: a parameter vector each (face ellipse and chin taper, skin tone from a demographic
  group, hair colour / hairline / length, eye spacing, size and iris colour, brows, nose, mouth,
  beard, marks); identity sizes follow a truncated power law (Zipf-like) between
  `min_images_per_identity` and `max_images_per_identity`;
* groups: four skin-tone groups in unequal proportions (default 0.55 / 0.25 / 0.12 / 0.08),
  stored per image (`dataset.groups`);
* nuisances per image: yaw (head rotation on a cylinder model: features shift and foreshorten,
  one side shaded), illumination (directional gradient and global gain), expression (mouth opens
  and curves, eyes squint, brows rise), Gaussian blur, occlusion (a mask band over the lower
  face), plus small alignment jitter, random background and pixel noise. A fraction
  `hard_fraction` (default 0.2) of images is "hard": at least one of the five factors is strong;
  the rest are near-frontal and clean;
* a train split and a disjoint set of test identities, with a verification protocol of genuine
  and impostor pairs (`VerificationPairs`), a stated fraction of which involve a hard image.

Everything is deterministic from `SynthFacesConfig.seed`. Rendering is vectorised numpy
(10k images of 32×32 in a few seconds on one core).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.ndimage
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from facekd.data.arrays import ArrayDataset
from facekd.utils import atomic_path, parse_angle

NUISANCES = ("yaw", "light", "expression", "blur", "occlusion")

# Base skin tones (RGB in [0, 1]) of the four groups, light to dark.
_SKIN = np.array([[0.93, 0.78, 0.66], [0.80, 0.60, 0.46], [0.62, 0.45, 0.32], [0.40, 0.28, 0.20]], np.float32)
_HAIR = np.array(
    [
        [0.06, 0.05, 0.05],
        [0.25, 0.15, 0.08],
        [0.45, 0.30, 0.15],
        [0.85, 0.70, 0.40],
        [0.60, 0.25, 0.10],
        [0.65, 0.65, 0.65],
    ],
    np.float32,
)  # black, dark brown, brown, blond, red, grey
_HAIR_P = np.array([0.35, 0.25, 0.15, 0.1, 0.07, 0.08])
_IRIS = np.array(
    [[0.10, 0.06, 0.03], [0.35, 0.20, 0.08], [0.20, 0.40, 0.70], [0.25, 0.50, 0.30], [0.45, 0.45, 0.50]], np.float32
)
_MASKS = np.array([[0.95, 0.95, 0.95], [0.55, 0.75, 0.90], [0.10, 0.10, 0.12], [0.50, 0.50, 0.50]], np.float32)


class SynthFacesConfig(BaseModel):
    """Sizes, biases and difficulty of SynthFaces. `SynthFacesConfig.preset(name)` gives the
    "quick" / "default" / "full" sizes; any field can be overridden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    image_size: int = Field(32, ge=16, le=112, description="square side in pixels")
    num_train_identities: int = Field(400, ge=2)
    num_test_identities: int = Field(150, ge=2)
    min_images_per_identity: int = Field(2, ge=2)
    max_images_per_identity: int = Field(200, ge=2)
    size_exponent: float = Field(1.4, gt=0, description="train identity size n has density ∝ n^-size_exponent")
    test_images_per_identity: int = Field(20, ge=2)
    group_proportions: tuple[float, ...] = (0.55, 0.25, 0.12, 0.08)
    hard_fraction: float = Field(0.2, ge=0, le=1, description="fraction of images with a strong nuisance")
    max_yaw: float = Field(math.radians(75), gt=0, le=math.pi / 2, description="radians; accepts '75deg'")
    hard_yaw: float = Field(math.radians(25), gt=0, description="radians; |yaw| of a hard pose is ≥ this")
    nuisance_strength: float = Field(1.0, ge=0, description="scales every strong nuisance's magnitude")
    noise_std: float = Field(0.025, ge=0, description="pixel noise std, fraction of the 0..255 range")
    num_genuine_pairs: int = Field(5000, ge=1)
    num_impostor_pairs: int = Field(100_000, ge=1)
    hard_pair_fraction: float | None = Field(
        0.3, ge=0, le=1, description="fraction of each pair kind involving a hard image; None: as drawn"
    )

    @field_validator("max_yaw", "hard_yaw", mode="before")
    @classmethod
    def _angle(cls, v):
        return parse_angle(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self):
        if self.max_images_per_identity < self.min_images_per_identity:
            raise ValueError("max_images_per_identity must be >= min_images_per_identity")
        p = np.asarray(self.group_proportions, float)
        if p.size < 1 or (p <= 0).any() or abs(p.sum() - 1) > 1e-6:
            raise ValueError(f"group_proportions must be positive and sum to 1, got {self.group_proportions}")
        if p.size > len(_SKIN):
            raise ValueError(f"at most {len(_SKIN)} groups (skin tones) are defined, got {p.size}")
        if self.hard_yaw >= self.max_yaw:
            raise ValueError("hard_yaw must be < max_yaw")
        return self

    @classmethod
    def preset(cls, name: Literal["quick", "default", "full"], **overrides) -> SynthFacesConfig:
        """quick: 371 train images of 40 identities, renders in < 1 s (tests, smoke runs);
        default: 32 px, ~9.2k train images of 400 identities, 150 test identities × 20 images,
        5k genuine / 100k impostor pairs; full: 48 px, ~35k train images of 1500 identities,
        400 test identities, 20k genuine / 1M impostor pairs."""
        presets = {
            "quick": dict(
                num_train_identities=40,
                num_test_identities=16,
                max_images_per_identity=40,
                test_images_per_identity=8,
                num_genuine_pairs=200,
                num_impostor_pairs=4000,
            ),
            "default": {},
            "full": dict(
                image_size=48,
                num_train_identities=1500,
                num_test_identities=400,
                num_genuine_pairs=20_000,
                num_impostor_pairs=1_000_000,
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown SynthFaces preset {name!r}; expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def fingerprint(self) -> str:
        """16-hex-digit hash of every field (and the renderer version)."""
        payload = json.dumps({"v": _RENDER_VERSION, **self.model_dump()}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


_RENDER_VERSION = 1


@dataclasses.dataclass(frozen=True)
class VerificationPairs:
    """Pairs of rows of the test dataset. All arrays have shape (P,).

    a, b: int64 row indices; issame: bool, True for genuine pairs; hard: bool, True when either
    image has a strong nuisance (`SynthFacesDataset.hard`)."""

    a: np.ndarray
    b: np.ndarray
    issame: np.ndarray
    hard: np.ndarray

    def __post_init__(self):
        n = len(self.a)
        for name in ("b", "issame", "hard"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"VerificationPairs: {name} has {len(getattr(self, name))} entries, a has {n}")

    def __len__(self) -> int:
        return len(self.a)

    @property
    def num_genuine(self) -> int:
        return int(self.issame.sum())

    @property
    def num_impostor(self) -> int:
        return int((~self.issame).sum())


class SynthFacesDataset(ArrayDataset):
    """One SynthFaces split: `ArrayDataset` plus per-image nuisances and identities.

    Extra attributes: `nuisance` dict of float32 (N,) arrays — yaw (radians, signed), light
    (directional-light strength 0..1), expression (0..1), blur (Gaussian sigma in pixels at
    `image_size`), occlusion (fraction of the lower face covered, 0 = none); `hard` bool (N,);
    `identity_ids` int64 (N,) global identity ids (train and test ids never overlap).
    """

    def __init__(
        self, images, labels, groups, nuisance: dict, hard, identity_ids, config_fp: str, split: str, hflip=False
    ):
        super().__init__(images, labels, groups, hflip=hflip, name=f"synthfaces/{split}")
        self.nuisance = {k: np.asarray(nuisance[k], np.float32) for k in NUISANCES}
        self.hard = np.asarray(hard, bool)
        self.identity_ids = np.asarray(identity_ids, np.int64)
        self.split = split
        self._config_fp = config_fp

    def fingerprint(self) -> str:
        """Config hash + split + flip setting (the content is a function of these)."""
        return hashlib.sha1(f"{self._config_fp}/{self.split}/{self.hflip}".encode()).hexdigest()[:16]


@dataclasses.dataclass
class SynthFacesData:
    """`train` and `test` datasets, the verification `pairs` (rows of `test`), the `config`."""

    train: SynthFacesDataset
    test: SynthFacesDataset
    pairs: VerificationPairs
    config: SynthFacesConfig


# ---------------------------------------------------------------------------------------------
# sizes, groups, parameters


def identity_sizes(n_ids: int, lo: int, hi: int, exponent: float) -> np.ndarray:
    """Images per identity, int64 (n_ids,), sorted descending: the quantiles (k + 0.5)/n_ids of
    the continuous power law p(n) ∝ n^-exponent on [lo, hi + 1), floored. Deterministic, so every
    seed spans the same long tail from `hi` down to `lo`."""
    q = (np.arange(n_ids) + 0.5) / n_ids
    a, b = float(lo), float(hi) + 1.0
    if abs(exponent - 1.0) < 1e-9:
        x = a * (b / a) ** q
    else:
        e = 1.0 - exponent
        x = (a**e + q * (b**e - a**e)) ** (1.0 / e)
    return np.clip(np.floor(x), lo, hi).astype(np.int64)[::-1].copy()


def allocate_groups(n: int, proportions, rng: np.random.Generator) -> np.ndarray:
    """int64 (n,) group per identity: counts by largest remainder (exact to ±1), order shuffled."""
    p = np.asarray(proportions, float)
    counts = np.floor(p * n).astype(int)
    rest = np.argsort(-(p * n - counts), kind="stable")[: n - counts.sum()]
    counts[rest] += 1
    return rng.permutation(np.repeat(np.arange(p.size), counts)).astype(np.int64)


def _identity_params(rng: np.random.Generator, groups: np.ndarray) -> dict[str, np.ndarray]:
    n = groups.size
    U = lambda lo, hi: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    skin = _SKIN[groups] * rng.uniform(0.92, 1.08, (n, 1)) + rng.normal(0, 0.02, (n, 3))
    hair = _HAIR[rng.choice(len(_HAIR), n, p=_HAIR_P)] + rng.normal(0, 0.04, (n, 3))
    bald = rng.random(n) < 0.08
    return dict(
        skin=np.clip(skin, 0, 1).astype(np.float32),
        hair=np.clip(hair, 0, 1).astype(np.float32),
        iris=_IRIS[rng.integers(0, len(_IRIS), n)],
        face_a=U(0.50, 0.68),
        face_b=U(0.70, 0.88),
        taper=U(0.0, 0.3),
        face_v=U(-0.02, 0.08),
        hairline=np.where(bald, -0.95, U(-0.72, -0.38)).astype(np.float32),
        hair_tilt=U(-0.3, 0.3),
        hair_len=np.where(rng.random(n) < 0.4, U(0.0, 0.9), U(-0.6, -0.2)).astype(np.float32),
        eye_x=U(0.20, 0.34),
        eye_v=U(-0.20, -0.02),
        eye_rx=U(0.07, 0.12),
        eye_ry=U(0.035, 0.06),
        brow_dv=U(0.09, 0.17),
        brow_th=U(0.02, 0.055),
        brow_len=U(1.1, 1.7),
        brow_tilt=U(-0.35, 0.35),
        nose_len=U(0.16, 0.30),
        nose_w=U(0.035, 0.08),
        mouth_v=U(0.30, 0.50),
        mouth_w=U(0.11, 0.24),
        mouth_h=U(0.022, 0.05),
        mouth_curv=U(-0.03, 0.03),
        lip=np.clip(_SKIN[groups] * np.array([0.85, 0.5, 0.5]) + rng.normal(0, 0.03, (n, 3)), 0, 1).astype(np.float32),
        beard=np.where(rng.random(n) < 0.2, U(0.35, 0.85), 0).astype(np.float32),
        mark_u=rng.uniform(-0.5, 0.5, (n, 2)).astype(np.float32),
        mark_v=rng.uniform(-0.35, 0.6, (n, 2)).astype(np.float32),
        mark_r=np.where(rng.random((n, 2)) < 0.5, rng.uniform(0.035, 0.07, (n, 2)), 0).astype(np.float32),
    )


def _nuisance_params(rng: np.random.Generator, n: int, cfg: SynthFacesConfig) -> dict[str, np.ndarray]:
    """Per-image nuisances. Easy images: |yaw| ~ 5°, faint light, neutral expression, no blur or
    occlusion. Hard images (probability `hard_fraction`): each factor is strong with probability
    yaw .5, light .35, expression .3, blur .3, occlusion .25 (at least one)."""
    s = cfg.nuisance_strength
    U = lambda lo, hi, size=n: rng.uniform(lo, hi, size)  # noqa: E731
    hard = rng.random(n) < cfg.hard_fraction
    p = np.array([0.5, 0.35, 0.3, 0.3, 0.25])
    active = (rng.random((n, 5)) < p) & hard[:, None]
    none = hard & ~active.any(1)
    active[np.flatnonzero(none), rng.choice(5, none.sum(), p=p / p.sum())] = True
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    hard_yaw = min(cfg.hard_yaw * max(s, 1e-3), cfg.max_yaw * 0.999)
    yaw = np.where(
        active[:, 0], sign * U(hard_yaw, max(hard_yaw, cfg.max_yaw * min(s, 1.0))), rng.normal(0, math.radians(5), n)
    )
    yaw = np.clip(yaw, -cfg.max_yaw, cfg.max_yaw)
    light = np.where(active[:, 1], np.clip(U(0.5, 1.0) * s, 0, 1), U(0, 0.15))
    expression = np.where(active[:, 2], np.clip(U(0.5, 1.0) * s, 0, 1), U(0, 0.15))
    px = cfg.image_size / 32.0  # blur in pixels scales with the image
    blur = np.where(active[:, 3], U(0.7, 1.6) * s * px, 0.0)
    occlusion = np.where(active[:, 4], np.clip(U(0.4, 1.0) * s, 0, 1), 0.0)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return dict(
        yaw=f32(yaw),
        light=f32(light),
        expression=f32(expression),
        blur=f32(blur),
        occlusion=f32(occlusion),
        hard=hard,
        light_dir=f32(U(0, 2 * np.pi)),
        gain=f32(np.where(active[:, 1], U(0.45, 1.3), U(0.85, 1.1))),
        roll=f32(rng.normal(0, math.radians(4), n)),
        shift=f32(rng.normal(0, 0.03, (n, 2))),
        scale=f32(U(0.95, 1.05)),
        smile=f32(np.where(rng.random(n) < 0.6, 1.0, -0.5)),
        bg=f32(U(0.1, 0.9, (n, 3))),
        bg_grad=f32(U(-0.2, 0.2, n)),
        mask_color=_MASKS[rng.integers(0, len(_MASKS), n)],
        noise=f32(U(0.5, 1.5) * cfg.noise_std),
    )


# ---------------------------------------------------------------------------------------------
# rendering


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Coverage of a shape from its signed distance `d` (negative inside), antialiased over one pixel."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _ellipse(u, v, cu, cv, ru, rv, px, angle=None):
    du, dv = u - cu, v - cv
    if angle is not None:
        c, s = np.cos(angle), np.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
    r = np.sqrt((du / ru) ** 2 + (dv / rv) ** 2)
    return _soft((r - 1.0) * np.minimum(ru, rv), px)


def _over(img, alpha, color):
    """Composite `color` (n, 3) over `img` (n, H, W, 3) with coverage `alpha` (n, H, W)."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * color[:, None, None, :]


def render_faces(ident: dict, nuis: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render n faces: identity parameters `ident` and nuisances `nuis` (one row per image) →
    uint8 (n, size, size, 3). `rng` draws the pixel noise."""
    n = nuis["yaw"].shape[0]
    c = lambda x: x[:, None, None]  # noqa: E731  (n,) -> (n, 1, 1)
    px = 2.0 / size
    g = (np.arange(size, dtype=np.float32) + 0.5) * px - 1.0
    y, x = np.meshgrid(g, g, indexing="ij")
    x, y = x[None], y[None]
    # alignment jitter: pixel → face coordinates (u right, v down, face centre near the origin)
    cr, sr, sc = c(np.cos(nuis["roll"])), c(np.sin(nuis["roll"])), c(nuis["scale"])
    xs, ys = x - c(nuis["shift"][:, 0]), y - c(nuis["shift"][:, 1])
    u, v = (cr * xs + sr * ys) / sc, (-sr * xs + cr * ys) / sc
    pxf = px / float(nuis["scale"].min())

    img = (nuis["bg"][:, None, None, :] * (1.0 + c(nuis["bg_grad"]) * y)[..., None]).astype(np.float32)

    a, b, fv = c(ident["face_a"]), c(ident["face_b"]), c(ident["face_v"])
    vf = v - fv
    # back hair: a head ellipse plus, for long hair, a band down the sides
    head = _ellipse(u, vf, 0, -0.08, a + 0.08, b + 0.06, pxf)
    long_hair = _soft(np.maximum(np.abs(u) - (a + 0.12), vf - c(ident["hair_len"])), pxf)
    _over(img, np.maximum(head * _soft(vf - (c(ident["hairline"]) + 0.35), pxf), long_hair), ident["hair"])

    # face: ellipse with a tapered chin
    a_v = a * (1.0 - c(ident["taper"]) * np.clip(vf, 0, None) / b)
    face = _soft((np.sqrt((u / a_v) ** 2 + (vf / b) ** 2) - 1.0) * a_v, pxf)
    yaw = c(nuis["yaw"])
    sy, cy = np.sin(yaw), np.cos(yaw)
    # cylinder model: screen u = a_v sin(φ + yaw); face-frame coordinate uf = a_v sin φ
    phi = np.arcsin(np.clip(u / a_v, -1, 1)) - yaw
    front = _soft(np.abs(phi) - np.pi / 2, 0.1)
    uf = a_v * np.sin(phi)
    shade = np.clip(1.0 - 0.45 * sy * u / a - 0.15 * (u / a) ** 2, 0.3, 1.3)
    skin = np.ascontiguousarray(ident["skin"][:, None, None, :] * shade[..., None])
    a3 = face[..., None]
    img *= 1 - a3
    img += a3 * skin
    inside = face * front
    pxu = pxf / np.maximum(cy, 0.3)  # foreshortened features: wider antialiasing in uf

    # fringe (front hair) along a tilted hairline
    _over(
        img,
        np.maximum(face, head) * _soft(vf - (c(ident["hairline"]) + c(ident["hair_tilt"]) * uf), pxf),
        ident["hair"],
    )
    # beard
    _over(img, inside * c(ident["beard"]) * _soft(c(ident["mouth_v"]) - 0.06 - vf, 2 * pxf), ident["hair"] * 0.7)
    # marks
    for k in range(ident["mark_u"].shape[1]):
        r = np.maximum(c(ident["mark_r"][:, k]), 1e-3)
        m = _ellipse(uf, vf, c(ident["mark_u"][:, k]) * a, c(ident["mark_v"][:, k]), r, r, pxu)
        _over(img, inside * m * c((ident["mark_r"][:, k] > 0).astype(np.float32)), ident["skin"] * 0.55)

    e = c(nuis["expression"])
    ex, ev, erx = c(ident["eye_x"]), c(ident["eye_v"]), c(ident["eye_rx"])
    ery = c(ident["eye_ry"]) * (1.0 - 0.6 * e)
    for side in (-1.0, 1.0):
        bu = side * ex
        brow = _ellipse(
            uf,
            vf,
            bu,
            ev - c(ident["brow_dv"]) - 0.05 * e,
            erx * c(ident["brow_len"]),
            c(ident["brow_th"]),
            pxu,
            angle=side * c(ident["brow_tilt"]),
        )
        _over(img, inside * brow, ident["hair"] * 0.6)
        _over(img, inside * _ellipse(uf, vf, bu, ev, erx, ery, pxu), np.full((n, 3), 0.95, np.float32))
        iris = _ellipse(uf, vf, bu, ev, 0.55 * erx, np.minimum(0.55 * erx, ery), pxu)
        _over(img, inside * iris, ident["iris"])
    # nose: a shadow from the eye line down to a tip that protrudes (shifts further under yaw)
    tip = a * np.sin(np.arcsin(np.clip(1.25 * sy, -1, 1)) - yaw) / np.maximum(cy, 0.3)
    nl = c(ident["nose_len"])
    nose = _ellipse(uf, vf, 0.5 * tip, ev + 0.5 * nl + 0.04, c(ident["nose_w"]) + 0.5 * np.abs(tip), 0.5 * nl, pxu)
    _over(img, inside * nose * 0.55, ident["skin"] * 0.6)
    # mouth: curved ellipse; expression opens it (dark inside) and curves it
    mv, mw, mh = c(ident["mouth_v"]), c(ident["mouth_w"]), c(ident["mouth_h"])
    curv = c(ident["mouth_curv"]) + 0.08 * e * c(nuis["smile"])
    dv = vf - mv + curv * (uf / mw) ** 2
    _over(img, inside * _ellipse(uf, dv, 0, 0, mw, mh * (1 + 2.5 * e), pxu), ident["lip"])
    _over(
        img,
        inside * _ellipse(uf, dv, 0, 0, 0.8 * mw, np.maximum(mh * 2.2 * e, 1e-3), pxu) * (e > 0.05),
        np.full((n, 3), 0.12, np.float32),
    )

    # occlusion: a mask band over the lower face from a line between the eyes and the chin
    occ = c(nuis["occlusion"])
    top = b - occ * (b - (ev + 0.1))
    band = _soft(np.maximum(top - vf, (np.sqrt((u / (a_v + 0.05)) ** 2 + (vf / (b + 0.04)) ** 2) - 1.0) * a), pxf)
    _over(img, band * (occ > 0), nuis["mask_color"])

    # illumination: directional gradient and gain
    ld = c(nuis["light_dir"])
    light = c(nuis["gain"]) * (1.0 + c(nuis["light"]) * (np.cos(ld) * x + np.sin(ld) * y))
    img *= np.clip(light, 0.1, 2.0)[..., None]
    # blur, grouped by sigma (rounded to 0.05 px)
    sig = np.round(nuis["blur"] / 0.05) * 0.05
    for s in np.unique(sig[sig > 0]):
        rows = np.flatnonzero(sig == s)
        img[rows] = scipy.ndimage.gaussian_filter(img[rows], sigma=(0, s, s, 0), mode="nearest")
    img += rng.standard_normal(img.shape, dtype=np.float32) * nuis["noise"][:, None, None, None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# splits and pairs


def _make_split(cfg: SynthFacesConfig, split: str, sizes: np.ndarray, id_offset: int, stream: int) -> SynthFacesDataset:
    rng_id = np.random.default_rng([cfg.seed, stream, 0])
    rng_nu = np.random.default_rng([cfg.seed, stream, 1])
    groups_id = allocate_groups(sizes.size, cfg.group_proportions, rng_id)
    ident = _identity_params(rng_id, groups_id)
    labels = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    nuis = _nuisance_params(rng_nu, labels.size, cfg)
    chunk = 2048
    images = np.empty((labels.size, cfg.image_size, cfg.image_size, 3), np.uint8)
    for k, s in enumerate(range(0, labels.size, chunk)):
        rows = slice(s, s + chunk)
        lab = labels[rows]
        images[rows] = render_faces(
            {key: val[lab] for key, val in ident.items()},
            {key: val[rows] for key, val in nuis.items()},
            cfg.image_size,
            np.random.default_rng([cfg.seed, stream, 2, k]),
        )
    return SynthFacesDataset(
        images,
        labels,
        groups_id[labels],
        {k: nuis[k] for k in NUISANCES},
        nuis["hard"],
        labels + id_offset,
        cfg.fingerprint(),
        split,
    )


def _choose(rng, pool_hard, pool_easy, n, hard_frac, what):
    """Pick n rows of candidate pairs: round(hard_frac·n) from the hard pool, the rest easy."""
    if hard_frac is None:
        pool = np.concatenate([pool_hard, pool_easy])
        if pool.shape[0] < n:
            raise ValueError(f"SynthFaces: only {pool.shape[0]} {what} pairs exist, {n} requested")
        return pool[rng.choice(pool.shape[0], n, replace=False)]
    nh = int(round(hard_frac * n))
    ne = n - nh
    if pool_hard.shape[0] < nh or pool_easy.shape[0] < ne:
        raise ValueError(
            f"SynthFaces: {what} pairs: need {nh} hard and {ne} easy, have {pool_hard.shape[0]} and "
            f"{pool_easy.shape[0]}; raise test identities / images per identity or lower the pair count"
        )
    return np.concatenate(
        [
            pool_hard[rng.choice(pool_hard.shape[0], nh, replace=False)],
            pool_easy[rng.choice(pool_easy.shape[0], ne, replace=False)],
        ]
    )


def make_pairs(test: SynthFacesDataset, cfg: SynthFacesConfig) -> VerificationPairs:
    """Verification protocol on `test`: `num_genuine_pairs` same-identity pairs and
    `num_impostor_pairs` different-identity pairs, each without repeats (a < b), a fraction
    `hard_pair_fraction` of each kind involving at least one hard image; shuffled."""
    rng = np.random.default_rng([cfg.seed, 99])
    labels, hard = test.labels, test.hard
    ia, ib = np.triu_indices(cfg.test_images_per_identity, 1)
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    gen = np.stack([(starts[:, None] + ia).ravel(), (starts[:, None] + ib).ravel()], 1)
    gh = hard[gen[:, 0]] | hard[gen[:, 1]]
    genuine = _choose(rng, gen[gh], gen[~gh], cfg.num_genuine_pairs, cfg.hard_pair_fraction, "genuine")
    # impostors: rejection-sample distinct (a < b) pairs of different identities until both
    # strata have enough candidates
    n = labels.size
    want = 3 * cfg.num_impostor_pairs
    codes = np.empty(0, np.int64)
    for _ in range(50):
        a, b = rng.integers(0, n, want), rng.integers(0, n, want)
        a, b = np.minimum(a, b), np.maximum(a, b)
        keep = labels[a] != labels[b]
        codes = np.unique(np.concatenate([codes, a[keep] * n + b[keep]]))
        imp = np.stack([codes // n, codes % n], 1)
        ih = hard[imp[:, 0]] | hard[imp[:, 1]]
        f = 0.0 if cfg.hard_pair_fraction is None else cfg.hard_pair_fraction
        if (
            ih.sum() >= f * cfg.num_impostor_pairs
            and (~ih).sum() >= (1 - f) * cfg.num_impostor_pairs + 1
            and codes.size >= cfg.num_impostor_pairs
        ):
            break
    impostor = _choose(rng, imp[ih], imp[~ih], cfg.num_impostor_pairs, cfg.hard_pair_fraction, "impostor")
    pairs = np.concatenate([genuine, impostor])
    issame = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
    order = rng.permutation(len(pairs))
    pairs, issame = pairs[order], issame[order]
    return VerificationPairs(pairs[:, 0].copy(), pairs[:, 1].copy(), issame, hard[pairs[:, 0]] | hard[pairs[:, 1]])


def make_synthfaces(cfg: SynthFacesConfig | None = None, cache_dir: str | os.PathLike | None = None) -> SynthFacesData:
    """Render SynthFaces for `cfg` (default config when None).

    With `cache_dir`, the arrays are stored in `cache_dir/synthfaces-<fingerprint>.npz` (written
    atomically) and reused on later calls with the same config.
    """
    cfg = cfg or SynthFacesConfig()
    if cache_dir is not None:
        path = Path(cache_dir) / f"synthfaces-{cfg.fingerprint()}.npz"
        if path.exists():
            return _load_cache(path, cfg)
    sizes = identity_sizes(
        cfg.num_train_identities, cfg.min_images_per_identity, cfg.max_images_per_identity, cfg.size_exponent
    )
    sizes = np.random.default_rng([cfg.seed, 7]).permutation(sizes)
    train = _make_split(cfg, "train", sizes, 0, stream=1)
    test_sizes = np.full(cfg.num_test_identities, cfg.test_images_per_identity, np.int64)
    test = _make_split(cfg, "test", test_sizes, cfg.num_train_identities, stream=2)
    data = SynthFacesData(train, test, make_pairs(test, cfg), cfg)
    if cache_dir is not None:
        _save_cache(path, data)
    return data


def _save_cache(path: Path, data: SynthFacesData) -> None:
    arrays = {"config": np.array(data.config.model_dump_json())}
    for split in ("train", "test"):
        ds = getattr(data, split)
        arrays.update(
            {
                f"{split}/images": ds.images,
                f"{split}/labels": ds.labels,
                f"{split}/groups": ds.groups,
                f"{split}/hard": ds.hard,
                f"{split}/identity_ids": ds.identity_ids,
            }
        )
        arrays.update({f"{split}/nuisance/{k}": v for k, v in ds.nuisance.items()})
    arrays.update({f"pairs/{f.name}": getattr(data.pairs, f.name) for f in dataclasses.fields(VerificationPairs)})
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _load_cache(path: Path, cfg: SynthFacesConfig) -> SynthFacesData:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable SynthFaces cache ({e}); delete it to re-render") from e
    if "config" not in arrays or SynthFacesConfig.model_validate_json(str(arrays["config"])) != cfg:
        raise ValueError(f"{path}: SynthFaces cache was made with a different config; delete it to re-render")
    splits = {}
    for split in ("train", "test"):
        g = lambda k: arrays[f"{split}/{k}"]  # noqa: E731
        splits[split] = SynthFacesDataset(
            g("images"),
            g("labels"),
            g("groups"),
            {k: g(f"nuisance/{k}") for k in NUISANCES},
            g("hard"),
            g("identity_ids"),
            cfg.fingerprint(),
            split,
        )
    pairs = VerificationPairs(**{f.name: arrays[f"pairs/{f.name}"] for f in dataclasses.fields(VerificationPairs)})
    return SynthFacesData(splits["train"], splits["test"], pairs, cfg)
