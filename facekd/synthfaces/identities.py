"""Who is in SynthFaces: identity sizes, groups, group-specific face parameters, label noise,
and how much of an identity an image still shows.

* `identity_sizes`: the long tail of images per identity (MS1MV3: 2 to more than 200).
* `allocate_groups`: skin-tone groups in unequal proportions.
* `identity_params`: one face-parameter vector per identity. Each group has its own
  discriminative features (`GROUP_FEATURES`): a feature that is group-specific varies over its
  full range only among that group's identities; in the other groups it stays within
  `minor_spread` of the group's typical face (`group_prototypes`). The `SHARED_FEATURES` vary in
  every group.
* `mix_identities`: the parameters an image is rendered with, a blend of its identity's and a
  random face's (identity information lost to strong nuisances).
* `noisy_rows`, `flip_partners`: which training rows carry a wrong label, and whose face they show.
"""

from __future__ import annotations

import numpy as np

# Base skin tones (RGB in [0, 1]) of the four groups, light to dark.
SKIN = np.array([[0.93, 0.78, 0.66], [0.80, 0.60, 0.46], [0.62, 0.45, 0.32], [0.40, 0.28, 0.20]], np.float32)
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
NUM_SKIN_TONES = len(SKIN)

# Group-specific features: group g's identities differ in GROUP_FEATURES[g] over their full range;
# every other group keeps them near its typical face. The features were dealt to the groups so
# that each group's set changes a face image equally much: largest first, each to the group whose
# total is smallest, by the mean absolute pixel change (0..255) when one feature of a frontal,
# unoccluded 32 px face is redrawn (`feature_salience`; 6.3 per group). Hair colour, the most
# salient single feature (14.5), varies in every group.
GROUP_FEATURES: tuple[tuple[str, ...], ...] = (
    ("face_a", "taper", "brow_th", "mouth_w", "mouth_h"),
    ("hair_len", "face_b", "brow_dv", "mouth_curv", "mark_u", "eye_ry", "lip"),
    ("face_v", "beard", "mouth_v", "brow_tilt", "iris", "mark_r", "nose_w"),
    ("hairline", "eye_v", "eye_x", "hair_tilt", "eye_rx", "mark_v", "brow_len", "nose_len"),
)
SHARED_FEATURES = ("hair",)
_PROTOTYPE_SEED = 20_240_601  # fixed: the groups' typical faces do not change with the data seed


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


def _draw_faces(rng: np.random.Generator, groups: np.ndarray) -> dict[str, np.ndarray]:
    """Face parameters with every feature at its full range (float32, one row per entry of `groups`)."""
    n = groups.size
    U = lambda lo, hi: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    skin = SKIN[groups] * rng.uniform(0.92, 1.08, (n, 1)) + rng.normal(0, 0.02, (n, 3))
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
        lip=np.clip(SKIN[groups] * np.array([0.85, 0.5, 0.5]) + rng.normal(0, 0.03, (n, 3)), 0, 1).astype(np.float32),
        beard=np.where(rng.random(n) < 0.2, U(0.35, 0.85), 0).astype(np.float32),
        mark_u=rng.uniform(-0.5, 0.5, (n, 2)).astype(np.float32),
        mark_v=rng.uniform(-0.35, 0.6, (n, 2)).astype(np.float32),
        mark_r=np.where(rng.random((n, 2)) < 0.5, rng.uniform(0.035, 0.07, (n, 2)), 0).astype(np.float32),
    )


def group_prototypes() -> dict[str, np.ndarray]:
    """Each group's typical face: one full-range draw per group from a fixed seed (rows 0..3)."""
    return _draw_faces(np.random.default_rng(_PROTOTYPE_SEED), np.arange(NUM_SKIN_TONES))


def identity_params(rng: np.random.Generator, groups: np.ndarray, minor_spread: float = 1.0) -> dict[str, np.ndarray]:
    """Face parameters of identities in `groups` (int (n,)): dict of float32 (n, ...) arrays.

    A feature in GROUP_FEATURES[g] varies over its full range among group g's identities; in any
    other group h it is `proto_h + minor_spread · (draw − proto_h)`, i.e. within `minor_spread` of
    the range around group h's typical face. `minor_spread = 1` makes every feature shared.
    """
    faces = _draw_faces(rng, groups)
    if minor_spread >= 1.0:
        return faces
    proto = group_prototypes()
    for key in {k for feats in GROUP_FEATURES for k in feats}:
        owner = next(g for g, feats in enumerate(GROUP_FEATURES) if key in feats)
        minor = groups != owner
        p = proto[key][groups[minor]]
        faces[key][minor] = (p + minor_spread * (faces[key][minor] - p)).astype(np.float32)
    return faces


def mix_identities(own: dict, other: dict, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Per row, `keep · own + (1 − keep) · other` for every parameter (keep float (n,) in [0, 1])."""
    out = {}
    for key, value in own.items():
        k = keep.reshape((-1,) + (1,) * (value.ndim - 1)).astype(np.float32)
        out[key] = (k * value + (1.0 - k) * other[key]).astype(np.float32)
    return out


def noisy_rows(labels: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """bool (N,): round(rate · N) rows chosen at random, at most ⌊(n − 1)/2⌋ of an identity with n
    images, so every identity keeps a clean majority (fewer rows only where the sizes cannot hold
    that many)."""
    n = labels.size
    want = round(rate * n)
    out = np.zeros(n, bool)
    if want == 0:
        return out
    cap = (np.bincount(labels) - 1) // 2
    order = rng.permutation(n)
    by_class = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within
    starts = np.r_[0, np.cumsum(np.bincount(labels))[:-1]]
    rank = np.empty(n, np.int64)
    rank[by_class] = np.arange(n) - starts[labels[by_class]]
    eligible = order[rank[order] < cap[labels[order]]]
    out[eligible[:want]] = True
    return out


def flip_partners(labels: np.ndarray, id_groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row's label, another identity of the same group (any other identity when the
    group has only one): int64 (len(labels),)."""
    out = np.empty(labels.size, np.int64)
    n_ids = id_groups.size
    for i, lab in enumerate(labels):
        same = np.flatnonzero((id_groups == id_groups[lab]) & (np.arange(n_ids) != lab))
        pool = same if same.size else np.flatnonzero(np.arange(n_ids) != lab)
        out[i] = pool[rng.integers(pool.size)]
    return out
