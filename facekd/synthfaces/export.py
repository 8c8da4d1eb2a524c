"""Write SynthFaces out in the real-data formats, so the whole real-data path can be run and tested:

    <out>/train.rec, train.idx, property   the train split, InsightFace layout (header record 0)
    <out>/<bin_name>.bin                   test pairs as a verification .bin in LFW's 10-fold layout
    <out>/IJBC/meta/ijbc_*.txt, loose_crop/  the test split as an IJB-C-style 1:1 release
    <out>/export.json                      what was written (counts, options)

IJB-style release: each test identity's images are dealt round-robin into `templates_per_identity`
templates; inside a template, consecutive images form medias of `images_per_media`. Genuine pairs:
every pair of templates of one identity; impostor pairs: `impostors_per_template` random templates
of other identities per template. Each face is placed in a larger "loose crop" by a random
similarity (scale, rotation, shift), and its 5 landmarks are the ArcFace template
(`arcface_template(image_size)`) mapped by that similarity, so `IJBDataset(image_size=S)` aligns it
back. Faceness scores are 1.0.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from facekd.data.binset import write_bin
from facekd.data.ijb import arcface_template, warp_affine
from facekd.data.recordio import write_recordio
from facekd.utils import atomic_path, save_json


def dataset_images(ds) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB images of a facekd dataset: its `.images` array when it has one
    (ArrayDataset), else every item's image tensor mapped back from [-1, 1]."""
    images = getattr(ds, "images", None)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images.reshape((*images.shape[:3], 3))
    return np.stack(
        [
            ((ds[i]["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
            for i in range(len(ds))
        ]
    )


def bin_fold_layout(issame: np.ndarray, nfolds: int = 10) -> np.ndarray:
    """Rows of a pair list arranged like LFW's .bin: nfolds folds, each k genuine then k impostor
    pairs, k = min(#genuine, #impostor) // nfolds (the first ones in order). Returns int64 row indices."""
    gen, imp = np.flatnonzero(issame), np.flatnonzero(~np.asarray(issame, bool))
    k = min(len(gen), len(imp)) // nfolds
    if k == 0:
        raise ValueError(
            f"need at least {nfolds} genuine and {nfolds} impostor pairs for a {nfolds}-fold .bin, "
            f"got {len(gen)} and {len(imp)}"
        )
    return np.concatenate([np.concatenate([gen[f * k : (f + 1) * k], imp[f * k : (f + 1) * k]]) for f in range(nfolds)])


def ijb_templates(labels: np.ndarray, templates_per_identity: int, images_per_media: int):
    """Deal each identity's rows round-robin into templates and medias → (template id, media id) per row (1-based)."""
    tids = np.zeros(len(labels), dtype=np.int64)
    mids = np.zeros(len(labels), dtype=np.int64)
    next_t = next_m = 1
    for ident in np.unique(labels):
        rows = np.flatnonzero(labels == ident)
        t = min(templates_per_identity, len(rows))
        for j in range(t):
            members = rows[j::t]
            tids[members] = next_t
            mids[members] = next_m + np.arange(len(members)) // images_per_media
            next_m = int(mids[members].max()) + 1
            next_t += 1
    return tids, mids


def ijb_pairs(tids: np.ndarray, labels: np.ndarray, impostors_per_template: int, rng) -> np.ndarray:
    """(P, 3) int64 rows `t1 t2 label`: all same-identity template pairs, plus random impostors."""
    t_ident = {int(t): int(labels[np.flatnonzero(tids == t)[0]]) for t in np.unique(tids)}
    all_t = np.array(sorted(t_ident), dtype=np.int64)
    ident_of = np.array([t_ident[t] for t in all_t])
    pairs = set()
    for i, t1 in enumerate(all_t):
        for t2 in all_t[i + 1 :]:
            if t_ident[int(t2)] == t_ident[int(t1)]:
                pairs.add((int(t1), int(t2), 1))
        others = all_t[ident_of != ident_of[i]]
        for t2 in rng.choice(others, size=min(impostors_per_template, len(others)), replace=False):
            a, b = sorted((int(t1), int(t2)))
            pairs.add((a, b, 0))
    return np.array(sorted(pairs), dtype=np.int64)


def loose_crop(face: np.ndarray, template: np.ndarray, rng, max_angle: float, scale_range, margin: float):
    """Place an aligned face in a larger canvas by a random similarity → (image, landmarks (5, 2))."""
    s = face.shape[0]
    side = math.ceil(s * margin)
    scale = rng.uniform(*scale_range)
    theta = rng.uniform(-max_angle, max_angle)
    c, sn = scale * math.cos(theta), scale * math.sin(theta)
    centre = np.array([(s - 1) / 2, (s - 1) / 2])
    target = np.array([(side - 1) / 2, (side - 1) / 2]) + rng.uniform(-0.05, 0.05, 2) * side
    a = np.array([[c, -sn], [sn, c]])
    m = np.hstack([a, (target - a @ centre)[:, None]])
    return warp_affine(face, m, (side, side)), template @ a.T + m[:, 2]


def write_loose_crops(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    template: np.ndarray,
    rng,
    *,
    max_angle,
    scale_range,
    margin,
    quality,
) -> tuple[list[str], list[str]]:
    """Each face placed in a loose crop (`loose_crop`) and saved as folder/<label>/<row>.jpg →
    (image names, `name x1 y1 … x5 y5 1.0` landmark lines)."""
    names, lm_lines = [], []
    for i in range(len(labels)):
        name = f"{int(labels[i])}/{i}.jpg"
        img, lm = loose_crop(images[i], template, rng, max_angle, scale_range, margin)
        with atomic_path(folder / name) as tmp:
            Image.fromarray(img).save(tmp, format="JPEG", quality=quality)
        names.append(name)
        lm_lines.append(f"{name} " + " ".join(f"{v:.4f}" for v in lm.ravel()) + " 1.0\n")
    return names, lm_lines


def export_synthfaces(
    data,
    out_dir: str | os.PathLike,
    *,
    quality: int = 95,
    bin_name: str = "synth_val",
    nfolds: int = 10,
    templates_per_identity: int = 2,
    images_per_media: int = 2,
    impostors_per_template: int = 20,
    max_angle: float = math.radians(15),
    scale_range: tuple[float, float] = (0.9, 1.2),
    margin: float = 1.6,
    seed: int = 0,
) -> dict:
    """Export `data` (SynthFacesData: .train, .test, .pairs) to RecordIO + .bin + IJB-C-style meta.

    Returns (and writes to out_dir/export.json) the paths and counts. `max_angle` in radians.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    train = data.train
    order = np.argsort(train.labels, kind="stable")  # the header layout needs identities contiguous
    train_images = dataset_images(train)
    rec = write_recordio(
        ((train_images[i], int(train.labels[i])) for i in order),
        f"{out}{os.sep}",
        quality=quality,
        num_classes=train.num_classes,
    )

    test_images = dataset_images(data.test)
    rows = bin_fold_layout(data.pairs.issame, nfolds)
    a, b = data.pairs.a[rows], data.pairs.b[rows]
    bin_images = np.stack([test_images[a], test_images[b]], axis=1).reshape((-1, *test_images.shape[1:]))
    bin_path = out / f"{bin_name}.bin"
    write_bin(bin_images, data.pairs.issame[rows], bin_path, quality=quality)

    size = test_images.shape[1]
    ijb = out / "IJBC"
    labels = np.asarray(data.test.labels)
    tids, mids = ijb_templates(labels, templates_per_identity, images_per_media)
    pairs = ijb_pairs(tids, labels, impostors_per_template, rng)
    crop = {"max_angle": max_angle, "scale_range": scale_range, "margin": margin, "quality": quality}
    names, lm_lines = write_loose_crops(ijb / "loose_crop", test_images, labels, arcface_template(size), rng, **crop)
    meta = ijb / "meta"
    with atomic_path(meta / "ijbc_face_tid_mid.txt") as tmp:
        tmp.write_text("".join(f"{n} {t} {m}\n" for n, t, m in zip(names, tids, mids)))
    with atomic_path(meta / "ijbc_name_5pts_score.txt") as tmp:
        tmp.write_text("".join(lm_lines))
    with atomic_path(meta / "ijbc_template_pair_label.txt") as tmp:
        tmp.write_text("".join(f"{t1} {t2} {lab}\n" for t1, t2, lab in pairs))

    summary = {
        "recordio": rec,
        "bin": str(bin_path),
        "bin_pairs": len(rows),
        "bin_folds": nfolds,
        "ijb_root": str(ijb),
        "ijb_target": "IJBC",
        "ijb_images": len(labels),
        "ijb_templates": len(np.unique(tids)),
        "ijb_genuine_pairs": int(pairs[:, 2].sum()),
        "ijb_impostor_pairs": int((pairs[:, 2] == 0).sum()),
        "image_size": int(size),
        "options": {
            "quality": quality,
            "templates_per_identity": templates_per_identity,
            "images_per_media": images_per_media,
            "impostors_per_template": impostors_per_template,
            "max_angle_rad": max_angle,
            "scale_range": list(scale_range),
            "margin": margin,
            "seed": seed,
        },
    }
    save_json(out / "export.json", summary)
    return summary
