"""The SynthFaces renderer: per-image nuisances, their severity, vectorised numpy rendering.

See the package docstring for what is rendered and why.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.ndimage

if TYPE_CHECKING:
    from facekd.synthfaces.config import SynthFacesConfig


_MASKS = np.array([[0.95, 0.95, 0.95], [0.55, 0.75, 0.90], [0.10, 0.10, 0.12], [0.50, 0.50, 0.50]], np.float32)
# How much each factor at full strength takes from identity (yaw, light, expression, blur,
# occlusion): large pose, blur and a covered face can hide who it is; light and expression alone cannot.
SEVERITY_WEIGHTS = (1.0, 0.6, 0.4, 1.0, 1.0)
IDENTITY_LOSS_POWER = 3


def nuisance_params(rng: np.random.Generator, n: int, cfg: SynthFacesConfig) -> dict[str, np.ndarray]:
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


def nuisance_severity(nuis: dict, cfg: SynthFacesConfig) -> np.ndarray:
    """float32 (n,) in [0, 1]: how much the nuisances of each image hide its identity.

    Each factor's strength m_k in [0, 1] across its strong range: |yaw| from `hard_yaw` (0) to
    `max_yaw` (1); light and expression from 0.5 to 1; blur σ from 0.7 to 1.6 px at 32 px (scaled
    with `image_size`); occlusion from 0.4 to 1. severity = 1 − Π_k (1 − c_k·m_k) with
    c = SEVERITY_WEIGHTS. Easy images score 0; one strong factor at its extreme scores c_k.
    """
    px = cfg.image_size / 32.0
    m = (
        np.clip((np.abs(nuis["yaw"]) - cfg.hard_yaw) / (cfg.max_yaw - cfg.hard_yaw), 0, 1),
        np.clip((nuis["light"] - 0.5) / 0.5, 0, 1),
        np.clip((nuis["expression"] - 0.5) / 0.5, 0, 1),
        np.clip((nuis["blur"] / px - 0.7) / 0.9, 0, 1),
        np.clip((nuis["occlusion"] - 0.4) / 0.6, 0, 1),
    )
    kept = np.ones_like(m[0])
    for c, mk in zip(SEVERITY_WEIGHTS, m):
        kept = kept * (1.0 - c * mk)
    return (1.0 - kept).astype(np.float32)


def identity_info(severity: np.ndarray, identity_loss: float) -> np.ndarray:
    """float32 share of the shown person's own face parameters in an image:
    1 − identity_loss · severity³ (slow at first, steep at the extreme)."""
    return (1.0 - identity_loss * np.asarray(severity, np.float64) ** IDENTITY_LOSS_POWER).astype(np.float32)


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


def _c(x: np.ndarray) -> np.ndarray:
    """(n,) → (n, 1, 1): one value per image, broadcast over its pixels."""
    return x[:, None, None]


@dataclasses.dataclass
class _Frame:
    """Pixel grid (x, y) and face coordinates (u right, v down; vf from the face centre) of n images,
    with the face geometry the drawing steps share."""

    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    vf: np.ndarray
    pxf: float
    a: np.ndarray
    b: np.ndarray
    a_v: np.ndarray | None = None
    uf: np.ndarray | None = None
    inside: np.ndarray | None = None
    pxu: np.ndarray | None = None


def render_faces(ident: dict, nuis: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render n faces: identity parameters `ident` and nuisances `nuis` (one row per image) →
    uint8 (n, size, size, 3). `rng` draws the pixel noise."""
    px = 2.0 / size
    g = (np.arange(size, dtype=np.float32) + 0.5) * px - 1.0
    y, x = np.meshgrid(g, g, indexing="ij")
    x, y = x[None], y[None]
    # alignment jitter: pixel → face coordinates (u right, v down, face centre near the origin)
    cr, sr, sc = _c(np.cos(nuis["roll"])), _c(np.sin(nuis["roll"])), _c(nuis["scale"])
    xs, ys = x - _c(nuis["shift"][:, 0]), y - _c(nuis["shift"][:, 1])
    u, v = (cr * xs + sr * ys) / sc, (-sr * xs + cr * ys) / sc
    pxf = px / float(nuis["scale"].min())

    img = (nuis["bg"][:, None, None, :] * (1.0 + _c(nuis["bg_grad"]) * y)[..., None]).astype(np.float32)
    a, b = _c(ident["face_a"]), _c(ident["face_b"])
    f = _Frame(x, y, u, v - _c(ident["face_v"]), pxf, a, b)
    _draw_head(img, ident, nuis, f)
    ev = _draw_features(img, ident, nuis, f)
    return _apply_conditions(img, nuis, f, ev, rng)


def _draw_head(img: np.ndarray, ident: dict, nuis: dict, f: _Frame) -> None:
    """Back hair, the face (cylinder model under yaw, one side shaded), fringe, beard and marks."""
    u, vf, pxf, a, b = f.u, f.vf, f.pxf, f.a, f.b
    # back hair: a head ellipse plus, for long hair, a band down the sides
    head = _ellipse(u, vf, 0, -0.08, a + 0.08, b + 0.06, pxf)
    long_hair = _soft(np.maximum(np.abs(u) - (a + 0.12), vf - _c(ident["hair_len"])), pxf)
    _over(img, np.maximum(head * _soft(vf - (_c(ident["hairline"]) + 0.35), pxf), long_hair), ident["hair"])

    # face: ellipse with a tapered chin
    a_v = a * (1.0 - _c(ident["taper"]) * np.clip(vf, 0, None) / b)
    face = _soft((np.sqrt((u / a_v) ** 2 + (vf / b) ** 2) - 1.0) * a_v, pxf)
    yaw = _c(nuis["yaw"])
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
    f.a_v, f.uf, f.inside, f.pxu = a_v, uf, inside, pxu

    # fringe (front hair) along a tilted hairline
    _over(
        img,
        np.maximum(face, head) * _soft(vf - (_c(ident["hairline"]) + _c(ident["hair_tilt"]) * uf), pxf),
        ident["hair"],
    )
    # beard
    _over(img, inside * _c(ident["beard"]) * _soft(_c(ident["mouth_v"]) - 0.06 - vf, 2 * pxf), ident["hair"] * 0.7)
    # marks
    for k in range(ident["mark_u"].shape[1]):
        r = np.maximum(_c(ident["mark_r"][:, k]), 1e-3)
        m = _ellipse(uf, vf, _c(ident["mark_u"][:, k]) * a, _c(ident["mark_v"][:, k]), r, r, pxu)
        _over(img, inside * m * _c((ident["mark_r"][:, k] > 0).astype(np.float32)), ident["skin"] * 0.55)


def _draw_features(img: np.ndarray, ident: dict, nuis: dict, f: _Frame) -> np.ndarray:
    """Brows, eyes and irises, nose, mouth (expression squints, raises, opens and curves them);
    returns the eye line `ev` (n, 1, 1)."""
    assert f.uf is not None and f.inside is not None and f.pxu is not None
    n = nuis["yaw"].shape[0]
    uf, vf, inside, pxu, a = f.uf, f.vf, f.inside, f.pxu, f.a
    e = _c(nuis["expression"])
    ex, ev, erx = _c(ident["eye_x"]), _c(ident["eye_v"]), _c(ident["eye_rx"])
    ery = _c(ident["eye_ry"]) * (1.0 - 0.6 * e)
    for side in (-1.0, 1.0):
        bu = side * ex
        brow = _ellipse(
            uf,
            vf,
            bu,
            ev - _c(ident["brow_dv"]) - 0.05 * e,
            erx * _c(ident["brow_len"]),
            _c(ident["brow_th"]),
            pxu,
            angle=side * _c(ident["brow_tilt"]),
        )
        _over(img, inside * brow, ident["hair"] * 0.6)
        _over(img, inside * _ellipse(uf, vf, bu, ev, erx, ery, pxu), np.full((n, 3), 0.95, np.float32))
        iris = _ellipse(uf, vf, bu, ev, 0.55 * erx, np.minimum(0.55 * erx, ery), pxu)
        _over(img, inside * iris, ident["iris"])
    # nose: a shadow from the eye line down to a tip that protrudes (shifts further under yaw)
    yaw = _c(nuis["yaw"])
    sy, cy = np.sin(yaw), np.cos(yaw)
    tip = a * np.sin(np.arcsin(np.clip(1.25 * sy, -1, 1)) - yaw) / np.maximum(cy, 0.3)
    nl = _c(ident["nose_len"])
    nose = _ellipse(uf, vf, 0.5 * tip, ev + 0.5 * nl + 0.04, _c(ident["nose_w"]) + 0.5 * np.abs(tip), 0.5 * nl, pxu)
    _over(img, inside * nose * 0.55, ident["skin"] * 0.6)
    # mouth: curved ellipse; expression opens it (dark inside) and curves it
    mv, mw, mh = _c(ident["mouth_v"]), _c(ident["mouth_w"]), _c(ident["mouth_h"])
    curv = _c(ident["mouth_curv"]) + 0.08 * e * _c(nuis["smile"])
    dv = vf - mv + curv * (uf / mw) ** 2
    _over(img, inside * _ellipse(uf, dv, 0, 0, mw, mh * (1 + 2.5 * e), pxu), ident["lip"])
    _over(
        img,
        inside * _ellipse(uf, dv, 0, 0, 0.8 * mw, np.maximum(mh * 2.2 * e, 1e-3), pxu) * (e > 0.05),
        np.full((n, 3), 0.12, np.float32),
    )
    return ev


def _apply_conditions(img: np.ndarray, nuis: dict, f: _Frame, ev: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Occlusion, illumination, blur and pixel noise; the image as uint8."""
    assert f.a_v is not None
    u, vf, pxf, a, b, a_v, x, y = f.u, f.vf, f.pxf, f.a, f.b, f.a_v, f.x, f.y
    # occlusion: a mask band over the lower face from a line between the eyes and the chin
    occ = _c(nuis["occlusion"])
    top = b - occ * (b - (ev + 0.1))
    band = _soft(np.maximum(top - vf, (np.sqrt((u / (a_v + 0.05)) ** 2 + (vf / (b + 0.04)) ** 2) - 1.0) * a), pxf)
    _over(img, band * (occ > 0), nuis["mask_color"])

    # illumination: directional gradient and gain
    ld = _c(nuis["light_dir"])
    light = _c(nuis["gain"]) * (1.0 + _c(nuis["light"]) * (np.cos(ld) * x + np.sin(ld) * y))
    img *= np.clip(light, 0.1, 2.0)[..., None]
    # blur, grouped by sigma (rounded to 0.05 px)
    sig = np.round(nuis["blur"] / 0.05) * 0.05
    for s in np.unique(sig[sig > 0]):
        rows = np.flatnonzero(sig == s)
        img[rows] = scipy.ndimage.gaussian_filter(img[rows], sigma=(0, s, s, 0), mode="nearest")
    img += rng.standard_normal(img.shape, dtype=np.float32) * nuis["noise"][:, None, None, None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
