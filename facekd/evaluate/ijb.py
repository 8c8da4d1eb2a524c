"""IJB-B / IJB-C 1:1 template verification, as arcface_torch's eval_ijbc.py computes it.

The meta files are read by `facekd.data.ijb.read_ijb_meta`; images are aligned and embedded by the
data / embed parts. Pipeline (face-ecosystem.md §1.3), from per-image raw features in the order of
``meta/<t>_face_tid_mid.txt``:

1. image feature: ``flip="sum"`` → f(img) + f(mirror) (F1, eval_ijbc's default), ``"concat"`` →
   [f(img), f(mirror)], ``"none"`` → f(img) (F0);
2. ``norm_score=True`` (N1, default) keeps the norm as a quality weight; False (N0) L2-normalises
   each image feature;
3. ``detector_score=True`` (D1, default) multiplies by the faceness score;
4. template = Σ over its media of (mean over the media's images), then L2-normalised;
5. score = cosine of the two templates, in batches of `batch_size` pairs (memory bounded);
6. TAR@FAR at 1e-6 … 1e-1, in the insightface (nearest ROC vertex) and strict conventions.

TFace's IJB_Evaluation.py corresponds to ``norm_score=False, detector_score=False, flip="none"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.evaluate.verification import TarAtFar, plot_roc, roc, tar_at_far
from facekd.utils import check_embeddings, save_json, save_npy

IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FLIP_MODES = ("sum", "concat", "none")


def image_features(
    features,
    features_flip=None,
    faceness=None,
    *,
    flip: str = "sum",
    norm_score: bool = True,
    detector_score: bool = True,
) -> np.ndarray:
    """Per-image features (N, d) or (N, 2d) for concat, float64, following the N/D/F switches.

    features / features_flip: raw (N, d) embeddings of each image and its mirror (features_flip
    is required unless flip="none"); faceness: (N,) detector scores (required with detector_score).
    """
    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
    x = check_embeddings(features, "features").astype(np.float64)
    if flip != "none":
        if features_flip is None:
            raise ValueError(f"flip={flip!r} needs the mirrored-image features (features_flip)")
        xf = check_embeddings(features_flip, "features_flip").astype(np.float64)
        if xf.shape != x.shape:
            raise ValueError(f"features_flip has shape {xf.shape}, expected {x.shape} like features")
        x = x + xf if flip == "sum" else np.concatenate([x, xf], axis=1)
    if not norm_score:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if detector_score:
        if faceness is None:
            raise ValueError("detector_score=True needs the faceness scores (last column of <t>_name_5pts_score.txt)")
        s = np.asarray(faceness, dtype=np.float64)
        if s.shape != (x.shape[0],):
            raise ValueError(f"faceness has shape {s.shape}, expected ({x.shape[0]},) (one score per image)")
        x = x * s[:, None]
    return x


def template_features(img_feats, templates, medias) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate image features (N, D) into L2-normalised template features.

    templates, medias: (N,) ids per image. Within a template, images of one media are averaged,
    the media vectors summed, the sum L2-normalised. Returns (unique template ids (T,), (T, D)).
    """
    f = np.asarray(img_feats, dtype=np.float64)
    t, m = np.asarray(templates).astype(np.int64), np.asarray(medias).astype(np.int64)
    if t.shape != (f.shape[0],) or m.shape != (f.shape[0],):
        raise ValueError(f"templates {t.shape} and medias {m.shape} must both be ({f.shape[0]},), one per image")
    tm, tm_idx = np.unique(np.stack([t, m], 1), axis=0, return_inverse=True)
    tm_idx = tm_idx.ravel()
    media_sum = np.zeros((len(tm), f.shape[1]))
    np.add.at(media_sum, tm_idx, f)
    media_mean = media_sum / np.bincount(tm_idx, minlength=len(tm))[:, None]
    uniq, t_idx = np.unique(tm[:, 0], return_inverse=True)
    tmpl = np.zeros((len(uniq), f.shape[1]))
    np.add.at(tmpl, t_idx.ravel(), media_mean)
    norms = np.linalg.norm(tmpl, axis=1, keepdims=True)
    if (norms == 0).any():
        bad = uniq[(norms[:, 0] == 0)]
        raise ValueError(f"templates with a zero feature sum (first ids {bad[:5].tolist()}): check faceness/features")
    return uniq, tmpl / norms


def pair_scores(template_ids, template_feats, p1, p2, batch_size: int = 100_000) -> np.ndarray:
    """Cosine score (P,) of each template pair (p1[i], p2[i]); features are unit rows (T, D)."""
    ids = np.asarray(template_ids).astype(np.int64)
    p1, p2 = np.asarray(p1).astype(np.int64), np.asarray(p2).astype(np.int64)
    pos = []
    for name, p in (("p1", p1), ("p2", p2)):
        i = np.clip(np.searchsorted(ids, p), 0, len(ids) - 1)
        missing = ids[i] != p
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise ValueError(
                f"template pair row {row}: {name} template id {p[row]} has no images "
                f"({int(missing.sum())} pairs reference unknown templates)"
            )
        pos.append(i)
    out = np.empty(len(p1))
    for s in range(0, len(p1), batch_size):
        out[s : s + batch_size] = np.einsum(
            "ij,ij->i", template_feats[pos[0][s : s + batch_size]], template_feats[pos[1][s : s + batch_size]]
        )
    return out


@dataclass
class IJBResult:
    """Scores of every template pair and TAR@FAR in both conventions."""

    scores: np.ndarray  # (P,)
    labels: np.ndarray  # (P,) bool
    insightface: list[TarAtFar]
    strict: list[TarAtFar]
    auc: float
    settings: dict

    def to_dict(self) -> dict:
        return {
            "n_pairs": int(self.labels.size),
            "n_genuine": int(self.labels.sum()),
            "n_impostor": int((~self.labels).sum()),
            "auc": self.auc,
            "settings": self.settings,
            "tar_at_far_insightface": [t.to_dict() for t in self.insightface],
            "tar_at_far_strict": [t.to_dict() for t in self.strict],
        }

    def table(self) -> str:
        """Markdown table of TAR (%) per FAR in both conventions, like eval_ijbc's PrettyTable."""
        head = "| convention | " + " | ".join(f"{t.far:.0e}" for t in self.insightface) + " |"
        rows = [
            f"| {name} | " + " | ".join(f"{100 * t.tar:.2f}" for t in ts) + " |"
            for name, ts in (("insightface", self.insightface), ("strict", self.strict))
        ]
        return "\n".join([head, "|" + "---|" * (len(self.insightface) + 1)] + rows)


def evaluate_ijb(
    features,
    templates,
    medias,
    p1,
    p2,
    labels,
    *,
    features_flip=None,
    faceness=None,
    flip: str = "sum",
    norm_score: bool = True,
    detector_score: bool = True,
    fars: Sequence[float] = IJB_FARS,
    batch_size: int = 100_000,
) -> IJBResult:
    """Full IJB 1:1 evaluation from per-image raw features (N, d). See the module docstring."""
    img = image_features(
        features, features_flip, faceness, flip=flip, norm_score=norm_score, detector_score=detector_score
    )
    ids, tf = template_features(img, templates, medias)
    y = np.asarray(labels)
    if y.shape != np.shape(p1) or not np.isin(y, (0, 1)).all():
        raise ValueError(f"pair labels: expected ({len(p1)},) values in {{0, 1}}, got shape {y.shape}")
    y = y.astype(bool)
    scores = pair_scores(ids, tf, p1, p2, batch_size)
    settings = {
        "flip": flip,
        "norm_score": norm_score,
        "detector_score": detector_score,
        "code": f"N{int(norm_score)}D{int(detector_score)}F{int(flip != 'none')}",
    }
    return IJBResult(
        scores,
        y,
        tar_at_far(scores, y, fars, "insightface"),
        tar_at_far(scores, y, fars, "strict"),
        roc(scores, y).auc,
        settings,
    )


def write_ijb_outputs(result: IJBResult, out_dir: str | os.PathLike, name: str) -> None:
    """Write `<name>.npy` (pair scores, as eval_ijbc saves them), `<name>.json` and `<name>_roc.png`."""
    out = Path(out_dir)
    save_npy(out / f"{name}.npy", result.scores.astype(np.float32))
    save_json(out / f"{name}.json", result.to_dict())
    plot_roc(
        {f"{name} {result.settings['code']}": (result.scores, result.labels)},
        out / f"{name}_roc.png",
        title=f"ROC on {name}",
    )
