"""The SynthPersons renderer: people, cameras, per-image conditions, vectorised numpy drawing.

Coordinates: y runs down from 0 (top) to 1 (bottom) in image heights; x runs right from the
image's centre line, also in image heights (so a 2:1 crop spans x in (-0.25, 0.25)).

* A person (`person_params`) is body shape (height, shoulders, hips, legs, head), skin and hair,
  and clothing: an upper garment (colour from a shared palette, a pattern — solid, horizontal or
  vertical stripes, checks, or a chest print — its second colour and frequency, long or short
  sleeves), a lower garment (trousers, shorts or a skirt), shoes and a bag (none, backpack,
  shoulder bag). Colours come from small palettes, so many people share each colour: a person
  is the combination.
* A camera (`camera_params`) is a viewpoint (the heading of its path; people walk both ways), an
  illumination (RGB gains, brightness, a vertical gradient), a scene behind the people (wall and
  floor colours, horizon, pillars), its distance (person height in the crop), blur and noise.
* Per image (`image_params`): the heading (camera path ± `view_noise_deg`), walking phase, crop
  jitter, the scene offset, clutter, a foreground occluder, brightness jitter.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage

from facekd.synthfaces.identities import SKIN

# Shared clothing palettes (RGB in [0, 1]).
UPPER = np.array(
    [
        [0.92, 0.92, 0.90],  # white
        [0.08, 0.08, 0.09],  # black
        [0.50, 0.50, 0.52],  # grey
        [0.75, 0.12, 0.12],  # red
        [0.15, 0.30, 0.70],  # blue
        [0.10, 0.14, 0.32],  # navy
        [0.18, 0.50, 0.22],  # green
        [0.90, 0.80, 0.20],  # yellow
        [0.90, 0.55, 0.65],  # pink
        [0.45, 0.22, 0.55],  # purple
        [0.92, 0.50, 0.12],  # orange
        [0.42, 0.28, 0.16],  # brown
    ],
    np.float32,
)
LOWER = np.array(
    [
        [0.07, 0.07, 0.08],  # black
        [0.28, 0.28, 0.30],  # dark grey
        [0.12, 0.15, 0.30],  # navy
        [0.25, 0.38, 0.58],  # denim
        [0.70, 0.62, 0.45],  # khaki
        [0.88, 0.88, 0.86],  # white
        [0.40, 0.27, 0.17],  # brown
        [0.55, 0.55, 0.57],  # grey
    ],
    np.float32,
)
_LOWER_P = np.array([0.25, 0.12, 0.12, 0.2, 0.1, 0.06, 0.07, 0.08])
SHOES = np.array(
    [[0.06, 0.06, 0.06], [0.9, 0.9, 0.9], [0.35, 0.22, 0.12], [0.5, 0.5, 0.5], [0.7, 0.1, 0.1]], np.float32
)
_HAIR = np.array([[0.06, 0.05, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15], [0.85, 0.70, 0.40]], np.float32)
PATTERNS = ("solid", "hstripes", "vstripes", "checks", "print")
_PATTERN_P = np.array([0.4, 0.2, 0.1, 0.15, 0.15])
LOWER_TYPES = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder")


def person_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """n people: float32 / int64 arrays (n, ...) of body, skin, hair and clothing."""
    U = lambda lo, hi, size=n: np.asarray(rng.uniform(lo, hi, size), np.float32)  # noqa: E731

    def colour(palette, p=None):
        return np.clip(palette[rng.choice(len(palette), n, p=p)] + rng.normal(0, 0.04, (n, 3)), 0, 1).astype(np.float32)

    skin = SKIN[rng.integers(0, len(SKIN), n)] * rng.uniform(0.9, 1.1, (n, 1))
    return dict(
        stature=U(0.92, 1.06),
        shoulder=U(0.095, 0.14),
        hip=U(0.075, 0.115),
        leg=U(0.026, 0.042),
        head=U(0.9, 1.12),
        torso=U(0.28, 0.34),
        skin=np.clip(skin, 0, 1).astype(np.float32),
        hair=colour(_HAIR),
        long_hair=(rng.random(n) < 0.3).astype(np.float32),
        upper=colour(UPPER),
        pattern=rng.choice(len(PATTERNS), n, p=_PATTERN_P).astype(np.int64),
        upper2=colour(UPPER),
        frequency=U(5.0, 11.0),
        long_sleeves=(rng.random(n) < 0.5).astype(np.float32),
        lower=colour(LOWER, _LOWER_P),
        lower_type=rng.choice(3, n, p=[0.7, 0.2, 0.1]).astype(np.int64),
        shoes=colour(SHOES),
        bag=rng.choice(3, n, p=[0.5, 0.3, 0.2]).astype(np.int64),
        bag_colour=colour(UPPER),
        bag_side=np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32),
    )


def _muted(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """n scene colours (n, 3): a grey level in [lo, hi] with a little colour (std 0.07)."""
    grey = rng.uniform(lo, hi, (n, 1))
    return np.clip(grey + rng.normal(0, 0.07, (n, 3)), 0, 1).astype(np.float32)


def camera_params(rng: np.random.Generator, n_cams: int) -> dict[str, np.ndarray]:
    """n_cams cameras: heading of the path (radians; 0 = walking towards the camera), colour
    gains, brightness, gradient, scene colours and layout, person height, blur (px at 128), noise."""
    U = lambda lo, hi, size=n_cams: np.asarray(rng.uniform(lo, hi, size), np.float32)  # noqa: E731
    headings = rng.permutation(np.array([0.0, 0.5, 1.0, 1.5, 0.25, 0.75]) * math.pi)[:n_cams]
    return dict(
        heading=headings.astype(np.float32),
        gains=np.exp(rng.normal(0, 0.18, (n_cams, 3))).astype(np.float32),
        brightness=U(0.6, 1.25),
        gradient=U(-0.4, 0.4),
        wall=_muted(rng, n_cams, 0.3, 0.8),
        floor=_muted(rng, n_cams, 0.2, 0.6),
        horizon=U(0.5, 0.8),
        pillar=_muted(rng, n_cams, 0.15, 0.9),
        pillar_period=U(0.12, 0.3),
        pillar_width=U(0.02, 0.06),
        stature=U(0.74, 0.9),
        blur=U(0.0, 1.2),
        noise=U(0.01, 0.04),
    )


def image_params(
    rng: np.random.Generator,
    cams: np.ndarray,
    tracklets: np.ndarray,
    cam_params: dict,
    view_noise_deg: float,
    occlusion_rate: float,
) -> dict:
    """Per image (cams int (n,), 0-based; tracklets int (n,): images of one walk past one camera):
    heading (the camera's path, either way, ± `view_noise_deg` per tracklet, ± 5° per image),
    walking phase, crop jitter, scene offset, clutter boxes, foreground occluder, brightness jitter."""
    n = cams.size
    U = lambda lo, hi, size=n: np.asarray(rng.uniform(lo, hi, size), np.float32)  # noqa: E731
    n_trk = int(tracklets.max()) + 1 if n else 0
    way = np.where(rng.random(n_trk) < 0.5, 0.0, math.pi) + rng.normal(0, math.radians(view_noise_deg), n_trk)
    heading = cam_params["heading"][cams] + way[tracklets] + rng.normal(0, math.radians(5), n)
    return dict(
        cam=cams,
        heading=heading.astype(np.float32),
        phase=U(0, 2 * math.pi),
        dx=rng.normal(0, 0.015, n).astype(np.float32),
        scale=U(0.95, 1.05),
        offset=U(-1.0, 1.0),
        clutter_xy=rng.uniform(-0.25, 0.25, (n, 2, 2)).astype(np.float32) + np.array([0, 0.55], np.float32),
        clutter_size=rng.uniform(0.02, 0.09, (n, 2, 2)).astype(np.float32),
        clutter_colour=_muted(rng, 2 * n, 0.1, 0.9).reshape(n, 2, 3),
        occluder=(rng.random(n) < occlusion_rate).astype(np.float32),
        occluder_top=U(0.62, 0.85),
        occluder_colour=_muted(rng, n, 0.1, 0.9),
        light=np.exp(rng.normal(0, 0.08, n)).astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------
# drawing


def _c(x: np.ndarray) -> np.ndarray:
    """(n,) → (n, 1, 1): one value per image, broadcast over its pixels."""
    return np.asarray(x, np.float32)[:, None, None]


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Coverage of a shape from its signed distance `d` (negative inside), antialiased over one pixel."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _in_band(shape_fn, x, y, lo, hi, px, *args):
    """Coverage (n, H, W) of a shape that lies between heights `lo` and `hi` ((n, 1, 1) each):
    `shape_fn(x, y_rows, *args)` is evaluated only on the pixel rows that some image's band covers."""
    ys = y[0, :, 0]
    i0 = int(np.searchsorted(ys, float(np.min(lo)) - 2 * px))
    i1 = int(np.searchsorted(ys, float(np.max(hi)) + 2 * px))
    n = max(np.shape(a)[0] for a in (lo, hi, *args) if np.ndim(a) == 3)
    out = np.zeros((n, ys.size, x.shape[-1]), np.float32)
    if i1 > i0:
        out[:, i0:i1] = shape_fn(x, y[:, i0:i1], *args)
    return out


def _box(x, y, x0, x1, y0, y1, px):
    def box(x, y, x0, x1, y0, y1):
        return _soft(np.maximum(np.maximum(x0 - x, x - x1), np.maximum(y0 - y, y - y1)), px)

    return _in_band(box, x, y, y0, y1, px, x0, x1, y0, y1)


def _segment(x, y, ax, ay, bx, by, r, px):
    """Coverage of a capsule of radius r around the segment (ax, ay)–(bx, by)."""

    def capsule(x, y, ax, ay, bx, by, r):
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0, 1)
        return _soft(np.hypot(x - ax - t * dx, y - ay - t * dy) - r, px)

    return _in_band(capsule, x, y, np.minimum(ay, by) - r, np.maximum(ay, by) + r, px, ax, ay, bx, by, r)


def _ellipse(x, y, cx, cy, rx, ry, px):
    def ellipse(x, y, cx, cy, rx, ry):
        r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return _soft((r - 1.0) * np.minimum(rx, ry), px)

    return _in_band(ellipse, x, y, cy - ry, cy + ry, px, cx, cy, rx, ry)


def _over(img, alpha, colour):
    """Composite `colour` (n, 3) or (n, H, W, 3) over `img` (n, H, W, 3) with coverage `alpha`
    (broadcastable to (n, H, W)), in place, inside the box of pixels some image covers."""
    alpha = np.broadcast_to(alpha, img.shape[:3])
    ys, xs = np.flatnonzero(alpha.any(axis=(0, 2))), np.flatnonzero(alpha.any(axis=(0, 1)))
    if ys.size == 0:
        return
    box = (slice(None), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    sub = img[box]
    step = (colour[:, None, None, :] if colour.ndim == 2 else colour[box]) - sub
    step *= alpha[box][..., None]
    sub += step


class _Body:
    """Where a person's parts are in one batch of images (all (n, 1, 1) arrays)."""

    def __init__(self, p: dict, v: dict, cam: dict, px: float):
        h = _c(p["stature"] * cam["stature"][v["cam"]] * v["scale"])
        self.px = px
        self.h, self.cx, self.foot = h, _c(v["dx"]), 0.5 + 0.5 * h
        self.cos, self.sin = _c(np.cos(v["heading"])), _c(np.sin(v["heading"]))
        self.front, self.back = np.maximum(self.cos, 0), np.maximum(-self.cos, 0)
        wview = 0.55 + 0.45 * np.abs(self.cos)
        top = self.foot - h
        self.rh = 0.062 * h * _c(p["head"])
        self.head_y = top + self.rh
        self.ys = top + 2.15 * self.rh
        self.yh = self.ys + _c(p["torso"]) * h
        self.knee = self.yh + 0.5 * (self.foot - self.yh)
        self.ankle = self.foot - 0.03 * h
        self.ws, self.wh = _c(p["shoulder"]) * h * wview, _c(p["hip"]) * h * wview
        self.leg = _c(p["leg"]) * h
        self.swing = _c(np.sin(v["phase"]))


def _torso_mask(x, y, b: _Body):
    t = np.clip((y - b.ys) / (b.yh - b.ys), 0, 1)
    half = b.ws + (b.wh - b.ws) * t
    return _soft(np.maximum(np.abs(x - b.cx) - half, np.maximum(b.ys - y, y - b.yh)), b.px)


def _pattern(x, y, p: dict, b: _Body) -> np.ndarray:
    """Share of the second colour on the upper garment (n, H, W) by pattern."""
    f = _c(p["frequency"]) * 2 * math.pi / b.h
    sy = np.tanh(3 * np.sin(f * (y - b.ys)))
    sx = np.tanh(3 * np.sin(f * (x - b.cx)))
    kind = p["pattern"]
    out = np.zeros(np.broadcast_shapes(x.shape, sy.shape), np.float32)
    out += _c(kind == 1) * (0.5 + 0.5 * sy)
    out += _c(kind == 2) * (0.5 + 0.5 * sx)
    out += _c(kind == 3) * (0.5 + 0.5 * sx * sy)
    return out


def _draw_legs(img, x, y, p: dict, b: _Body) -> None:
    """Legs (trousers, shorts with bare shins, or a skirt) and shoes."""
    kind = p["lower_type"]
    spread = 0.45 * b.wh
    stride = np.abs(b.sin) * 0.11 * b.h * b.swing
    for side in (-1.0, 1.0):
        hx, ax = b.cx + side * spread, b.cx + side * (spread * (0.6 + 0.4 * np.abs(b.cos))) + side * stride
        kx = 0.5 * (hx + ax)
        upper = _segment(x, y, hx, b.yh, kx, b.knee, b.leg, b.px)
        lower = _segment(x, y, kx, b.knee, ax, b.ankle, b.leg * 0.9, b.px)
        bare = _c(kind != 0)
        _over(img, upper, p["lower"])
        _over(img, lower * (1 - bare), p["lower"])
        _over(img, lower * bare, p["skin"])
        shoe = _ellipse(x, y, ax + 0.01 * b.h * b.sin, b.ankle + 0.008 * b.h, 0.034 * b.h, 0.018 * b.h, b.px)
        _over(img, shoe, p["shoes"])
    t = np.clip((y - b.yh) / (b.knee + 0.06 * b.h - b.yh), 0, 1)
    skirt = _soft(
        np.maximum(np.abs(x - b.cx) - b.wh * (1 + 0.6 * t), np.maximum(b.yh - y, y - b.knee - 0.06 * b.h)), b.px
    )
    _over(img, skirt * _c(kind == 2), p["lower"])


def _draw_upper(img, x, y, p: dict, b: _Body) -> None:
    """Back of a backpack (seen from behind or the side), torso with its pattern, arms, chest print."""
    torso = _torso_mask(x, y, b)
    share = _pattern(x, y, p, b)[..., None]
    garment = (1 - share) * p["upper"][:, None, None, :] + share * p["upper2"][:, None, None, :]
    _over(img, torso, garment)
    for side in (-1.0, 1.0):
        sx, sy = b.cx + side * b.ws * 0.92, b.ys + 0.02 * b.h
        swing = side * 0.0 + 0.06 * b.h * b.swing * np.abs(b.sin) * side
        ex, ey = b.cx + side * (b.ws + 0.012 * b.h) + 0.5 * swing, b.ys + 0.19 * b.h
        wx, wy = b.cx + side * (b.ws + 0.02 * b.h) + swing, b.ys + 0.36 * b.h
        arm_w = 0.026 * b.h * (0.8 + 0.2 * np.abs(b.cos))
        _over(img, _segment(x, y, sx, sy, ex, ey, arm_w, b.px), p["upper"])
        fore = _segment(x, y, ex, ey, wx, wy, arm_w * 0.9, b.px)
        longs = _c(p["long_sleeves"])
        _over(img, fore * longs, p["upper"])
        _over(img, fore * (1 - longs), p["skin"])
        _over(img, _ellipse(x, y, wx, wy + 0.015 * b.h, arm_w, arm_w * 1.2, b.px), p["skin"])
    chest = _box(x, y, b.cx - 0.45 * b.ws, b.cx + 0.45 * b.ws, b.ys + 0.07 * b.h, b.ys + 0.16 * b.h, b.px)
    _over(img, chest * b.front * _c(p["pattern"] == 4), p["upper2"])


def _draw_bag(img, x, y, p: dict, b: _Body, behind: bool) -> None:
    """Backpack (drawn behind the body when the person faces the camera, over it otherwise; straps
    in front) and shoulder bag (a strap across the torso, the bag at one hip)."""
    pack = _c(p["bag"] == 1)
    bx = b.cx - b.sin * 0.85 * b.ws
    body = _box(x, y, bx - 0.8 * b.ws, bx + 0.8 * b.ws, b.ys + 0.02 * b.h, b.ys + 0.24 * b.h, b.px)
    facing = (b.cos > 0).astype(np.float32)
    _over(img, body * pack * (facing if behind else 1 - facing), p["bag_colour"])
    if behind:
        return
    for side in (-1.0, 1.0):
        strap = _segment(
            x, y, b.cx + side * 0.55 * b.ws, b.ys, b.cx + side * 0.6 * b.ws, b.ys + 0.17 * b.h, 0.008 * b.h, b.px
        )
        _over(img, strap * pack * b.front, p["bag_colour"])
    shoulder = _c(p["bag"] == 2)
    s = _c(p["bag_side"])
    strap = _segment(x, y, b.cx - s * 0.8 * b.ws, b.ys, b.cx + s * b.wh, b.yh - 0.02 * b.h, 0.007 * b.h, b.px)
    _over(img, strap * shoulder, p["bag_colour"] * 0.8)
    hx = b.cx + s * (b.wh + 0.03 * b.h)
    bag = _box(x, y, hx - 0.045 * b.h, hx + 0.045 * b.h, b.yh - 0.05 * b.h, b.yh + 0.05 * b.h, b.px)
    _over(img, bag * shoulder, p["bag_colour"])


def _draw_head(img, x, y, p: dict, b: _Body) -> None:
    """Long hair behind, the head, the hair cap (the whole head from behind)."""
    longs = _c(p["long_hair"])
    hang = _box(x, y, b.cx - 0.95 * b.rh, b.cx + 0.95 * b.rh, b.head_y, b.ys + 0.07 * b.h, b.px)
    _over(img, hang * longs * np.maximum(b.back, 0.6), p["hair"])
    head = _ellipse(x, y, b.cx + 0.15 * b.rh * b.sin, b.head_y, 0.82 * b.rh, b.rh, b.px)
    _over(img, head, p["skin"])
    cap = head * _soft(y - (b.head_y - 0.25 * b.rh + 1.4 * b.rh * b.back), b.px)
    _over(img, cap, p["hair"])


def _draw_scene(img, x, y, v: dict, cam: dict, px: float) -> None:
    """The camera's scene (wall, floor below the horizon, pillars moving with the crop) and clutter."""
    c = v["cam"]
    horizon = _c(cam["horizon"][c])
    floor = _soft(horizon - y, px)[..., None]
    shade = (1.0 + 0.25 * (y - horizon))[..., None]
    img[:] = (cam["wall"][c][:, None, None, :] * (1 - floor) + cam["floor"][c][:, None, None, :] * floor) * shade
    period = _c(cam["pillar_period"][c])
    phase = (x + _c(v["offset"]) * period) / period
    dist = np.abs(phase - np.round(phase)) * period - _c(cam["pillar_width"][c])
    _over(img, _soft(dist, px) * _soft(y - horizon, px), cam["pillar"][c])
    for k in range(v["clutter_xy"].shape[1]):
        cx, cy = _c(v["clutter_xy"][:, k, 0]), _c(v["clutter_xy"][:, k, 1])
        w, h = _c(v["clutter_size"][:, k, 0]), _c(v["clutter_size"][:, k, 1])
        _over(img, _box(x, y, cx - w, cx + w, cy - h, cy + h, px), v["clutter_colour"][:, k])


def _apply_camera(img, x, y, v: dict, cam: dict, rng: np.random.Generator, height: int) -> np.ndarray:
    """Foreground occluder, the camera's colour gains / brightness / gradient, its blur and noise → uint8."""
    px = 1.0 / height
    occ = _soft(_c(v["occluder_top"]) - y, px) * _c(v["occluder"])
    _over(img, occ, v["occluder_colour"])
    c = v["cam"]
    light = _c(cam["brightness"][c] * v["light"]) * (1.0 + _c(cam["gradient"][c]) * (y - 0.5))
    img *= light[..., None] * cam["gains"][c][:, None, None, :]
    sig = np.round(cam["blur"][c] * height / 128.0 / 0.1) * 0.1
    for s in np.unique(sig[sig > 0]):
        rows = np.flatnonzero(sig == s)
        img[rows] = scipy.ndimage.gaussian_filter(img[rows], sigma=(0, s, s, 0), mode="nearest")
    img += rng.standard_normal(img.shape, dtype=np.float32) * cam["noise"][c][:, None, None, None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def render_persons(
    people: dict, views: dict, cam: dict, height: int, rng: np.random.Generator, visible: np.ndarray | None = None
) -> np.ndarray:
    """Render n crops of H × W = height × height/2: person parameters `people` and image
    parameters `views` (one row per image), cameras `cam` → uint8 (n, H, W, 3). `visible` (bool
    (n,), default all) False draws the scene only (a false detection). `rng` draws the pixel noise."""
    n, width = views["cam"].size, height // 2
    px = 1.0 / height
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[None, :, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / height - 0.25)[None, None, :]
    img = np.empty((n, height, width, 3), np.float32)
    _draw_scene(img, x, y, views, cam, px)
    person = np.ones(n, bool) if visible is None else np.asarray(visible, bool)
    rows = np.flatnonzero(person)
    if rows.size:
        sub = img[rows]
        p = {k: v[rows] for k, v in people.items()}
        v = {k: val[rows] for k, val in views.items()}
        b = _Body(p, v, cam, px)
        _draw_bag(sub, x, y, p, b, behind=True)
        _draw_legs(sub, x, y, p, b)
        _draw_upper(sub, x, y, p, b)
        _draw_bag(sub, x, y, p, b, behind=False)
        _draw_head(sub, x, y, p, b)
        img[rows] = sub
    return _apply_camera(img, x, y, views, cam, rng, height)
