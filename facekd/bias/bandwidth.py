"""Bandwidth rule of "Rectifying the Data Bias" (Eq. 5–7): per-class rule of thumb, averaged.

Eq. 5 is Silverman's rule h = 0.9 σ n^(-1/5). Eq. 6 takes, for class i with m_i images, the RMS angle
σ_i between its embeddings and the class centre x̄_i (the normalised mean of the class's unit
embeddings), and Eq. 7 averages 0.9 σ_i m_i^(-1/5) over the classes. Classes with fewer than
`min_images` (default 2) images have no spread and are skipped and counted; so are classes whose
mean embedding has zero norm (no defined centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import BeforeValidator

from facekd.utils import check_embeddings, parse_angle

__all__ = ["BandwidthResult", "BandwidthSpec", "bandwidth_rule", "check_bandwidth", "resolve_bandwidth"]


@dataclass
class BandwidthResult:
    """h (radians) from Eq. 7; per-class σ_i (radians, NaN for skipped classes) and counts."""

    bandwidth: float
    sigma: np.ndarray  # float64 (C,), indexed by position in `classes`
    classes: np.ndarray  # int64 (C,) label values
    counts: np.ndarray  # int64 (C,) images per class
    n_used: int
    n_skipped: int

    @property
    def degrees(self) -> float:
        return math.degrees(self.bandwidth)


def bandwidth_rule(embeddings, labels, min_images: int = 2, factor: float = 0.9) -> BandwidthResult:
    """Eq. 5–7: h = mean over classes of factor·σ_i·m_i^(-1/5), σ_i the RMS angle to the centre.

    embeddings: (N, d) (normalised here); labels: (N,) integer class ids. Returns radians.
    """
    x = check_embeddings(embeddings, "embeddings", require_unit=True).astype(np.float64)
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels: expected an integer array of shape ({x.shape[0]},), got {labels.dtype} {labels.shape}"
        )
    if min_images < 2:
        raise ValueError(f"min_images must be >= 2 (one image has no spread), got {min_images}")
    classes, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((classes.size, x.shape[1]))
    np.add.at(sums, inv, x)
    norms = np.linalg.norm(sums, axis=1)
    usable = (counts >= min_images) & (norms > 1e-12 * counts)
    centres = sums / np.where(norms > 0, norms, 1.0)[:, None]
    theta = np.arccos(np.clip(np.einsum("nd,nd->n", x, centres[inv]), -1.0, 1.0))
    sigma = np.sqrt(np.bincount(inv, weights=theta**2, minlength=classes.size) / counts)
    sigma[~usable] = np.nan
    if not usable.any():
        raise ValueError(
            f"bandwidth rule: no class has >= {min_images} images with a defined centre ({classes.size} classes)"
        )
    h = float(np.mean(factor * sigma[usable] * counts[usable] ** -0.2))
    return BandwidthResult(
        h, sigma, classes.astype(np.int64), counts.astype(np.int64), int(usable.sum()), int((~usable).sum())
    )


def check_bandwidth(value) -> str:
    """A bandwidth as written in configs and on the command line: an angle with its unit in
    (0°, 180°] ("12deg", "0.21rad") or "auto" (the rule above, on the embeddings' labels).
    Returns the canonical text (stripped; "auto" lower-cased); ValueError naming the value otherwise."""
    text = str(value).strip()
    if text.lower() == "auto":
        return "auto"
    radians = parse_angle(value)
    if not 0.0 < radians <= math.pi:
        raise ValueError(f"bandwidth {text!r} is outside (0deg, 180deg]: an angle between unit vectors")
    return text


BandwidthSpec = Annotated[str, BeforeValidator(check_bandwidth)]
"""A pydantic field type for `check_bandwidth`: YAML options and CLI flags share it."""


def resolve_bandwidth(spec: str, embeddings=None, labels=None) -> tuple[float, BandwidthResult | None]:
    """(h in radians, the rule's result when `spec` is "auto", else None). "auto" needs the
    embeddings (N, d) and their integer labels (N,)."""
    spec = check_bandwidth(spec)
    if spec != "auto":
        return parse_angle(spec), None
    if embeddings is None or labels is None:
        raise ValueError("bandwidth auto (the rule of Eq. 5-7) needs the embeddings and their labels")
    res = bandwidth_rule(embeddings, labels)
    return res.bandwidth, res
