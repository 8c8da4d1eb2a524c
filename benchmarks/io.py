"""I/O and large-scale evaluation benchmark, in one run:

1. RecordIO read + JPEG decode, images/s in one process (= one DataLoader worker), against
   decoding the same JPEG bytes from an image folder with PIL; plus the header-only label scan.
2. IJB-C-sized 1:1 evaluation from features (469,375 images with their mirrors, 23,124 templates,
   15,658,489 pairs, 512-d, synthetic): `facekd.evaluate.ijb.evaluate_ijb` + `write_ijb_outputs`
   against the float64 code it replaced (kept below as the baseline), wall and CPU seconds of
   each, the speed-up, and how far their scores, AUC, thresholds and TARs differ.
3. Streaming impostor counting for strict TAR at FAR = 1e-6 over >= 1e9 all-to-all pairs
   (`facekd.evaluate.streaming.streaming_tar_at_far`), pairs/s and peak memory.

    .venv/bin/python benchmarks/io.py --threads 2               # full sizes
    .venv/bin/python benchmarks/io.py --parts ijb --threads 2   # only the IJB evaluation
    .venv/bin/python benchmarks/io.py --quick                   # small sizes, for a smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facekd.data.folder import ImageFolderDataset
from facekd.data.recordio import RecordIODataset, read_labels, write_recordio
from facekd.utils import save_json, save_npy


def face_like_jpegs(n: int, size: int = 112, ids: int = 50, seed: int = 0) -> list[tuple[bytes, int]]:
    """n JPEGs (quality 95) of smooth random images with noise, the kind of entropy a face crop has."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        f = rng.uniform(1, 6, (3, 2))
        img = np.stack([128 + 90 * np.sin(f[c, 0] * 3 * xx + f[c, 1] * 2 * yy) for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        out.append((buf.getvalue(), i % ids))
    return out


def bench_read(n: int, tmp: Path) -> dict:
    items = sorted(face_like_jpegs(n), key=lambda t: t[1])
    write_recordio(items, f"{tmp}/rec/")
    for j, (data, label) in enumerate(items):
        p = tmp / "folder" / f"{label:05d}" / f"{j}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    rec, folder = RecordIODataset(tmp / "rec"), ImageFolderDataset(tmp / "folder")
    res = {"n_images": n, "mean_jpeg_bytes": float(np.mean([len(d) for d, _ in items]))}
    for name, ds in (("recordio", rec), ("folder", folder)):
        ds.load_image(0)
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        res[f"{name}_items_per_s"] = len(ds) / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(len(ds)):
            ds._encoded(i)
        res[f"{name}_read_only_per_s"] = len(ds) / (time.perf_counter() - t)
    reps = max(1, 200_000 // n)
    keys, offs = np.tile(rec.keys, reps), np.tile(rec.offsets, reps)
    t = time.perf_counter()
    read_labels(rec.reader, keys, offs)
    res["label_scan_records_per_s"] = len(keys) / (time.perf_counter() - t)
    return res


# ---------------------------------------------------------------------------------------------
# IJB-C-sized evaluation from features: the current library path against the path it replaced.
# The baseline below is the previous facekd code (float64 per-image features, np.add.at pooling,
# 100k-pair einsum batches, and a sort of all scores for each metric), kept here only to be timed.


def _baseline_image_features(x, xf, faceness):
    """N1D1F1: f(img) + f(mirror), times faceness, in float64."""
    x = np.asarray(x, dtype=np.float64) + np.asarray(xf, dtype=np.float64)
    return x * np.asarray(faceness, dtype=np.float64)[:, None]


def _baseline_template_features(f, templates, medias):
    t, m = np.asarray(templates).astype(np.int64), np.asarray(medias).astype(np.int64)
    tm, tm_idx = np.unique(np.stack([t, m], 1), axis=0, return_inverse=True)
    tm_idx = tm_idx.ravel()
    media_sum = np.zeros((len(tm), f.shape[1]))
    np.add.at(media_sum, tm_idx, f)
    media_mean = media_sum / np.bincount(tm_idx, minlength=len(tm))[:, None]
    uniq, t_idx = np.unique(tm[:, 0], return_inverse=True)
    tmpl = np.zeros((len(uniq), f.shape[1]))
    np.add.at(tmpl, t_idx.ravel(), media_mean)
    return uniq, tmpl / np.linalg.norm(tmpl, axis=1, keepdims=True)


def _baseline_pair_scores(ids, feats, p1, p2, batch_size=100_000):
    pos = [np.clip(np.searchsorted(ids, p), 0, len(ids) - 1) for p in (p1, p2)]
    out = np.empty(len(p1))
    for s in range(0, len(p1), batch_size):
        out[s : s + batch_size] = np.einsum(
            "ij,ij->i", feats[pos[0][s : s + batch_size]], feats[pos[1][s : s + batch_size]]
        )
    return out


def _baseline_metrics(scores, y, fars):
    """insightface TAR (roc_curve), strict TAR (np.partition per FAR), AUC (roc_curve + roc_auc_score)
    and the plot's ROC (roc_curve again): four sorts of all scores, as before."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from facekd.evaluate.verification import Roc

    gen, imp = scores[y], scores[~y]
    fpr, tpr, thr = (np.flipud(a) for a in roc_curve(y, scores))
    insightface = []
    for far in fars:
        i = int(np.argmin(np.abs(fpr - far)))
        insightface.append((float(tpr[i]), float(thr[i]), float(fpr[i])))
    strict = []
    for far in fars:
        k = math.floor(round(far * imp.size, 9))
        tau = -math.inf if k >= imp.size else float(np.partition(imp, imp.size - 1 - k)[imp.size - 1 - k])
        strict.append((float(np.mean(gen > tau)), tau, float(np.mean(imp > tau))))
    auc = float(roc_auc_score(y, scores))
    plot_fpr, plot_tpr, plot_thr = roc_curve(y, scores)
    return insightface, strict, Roc(plot_fpr, plot_tpr, plot_thr, auc)


def _baseline_evaluate(data: dict, fars, out: Path) -> dict:
    from facekd.evaluate.verification import plot_roc

    img = _baseline_image_features(data["features"], data["features_flip"], data["faceness"])
    ids, tf = _baseline_template_features(img, data["templates"], data["medias"])
    del img
    scores = _baseline_pair_scores(ids, tf, data["p1"], data["p2"])
    insightface, strict, roc = _baseline_metrics(scores, data["labels"], fars)
    save_npy(out / "IJBC.npy", scores.astype(np.float32))
    save_json(out / "IJBC.json", {"insightface": insightface, "strict": strict, "auc": roc.auc})
    plot_roc({"IJBC": roc}, out / "IJBC_roc.png")
    return {"scores": scores, "insightface": insightface, "strict": strict, "auc": roc.auc}


def _library_evaluate(data: dict, fars, out: Path) -> dict:
    from facekd.evaluate.ijb import evaluate_ijb, write_ijb_outputs

    res = evaluate_ijb(
        data["features"],
        data["templates"],
        data["medias"],
        data["p1"],
        data["p2"],
        data["labels"],
        features_flip=data["features_flip"],
        faceness=data["faceness"],
        fars=fars,
    )
    write_ijb_outputs(res, out, "IJBC")
    return {
        "scores": res.scores,
        "insightface": [(t.tar, t.threshold, t.achieved_far) for t in res.insightface],
        "strict": [(t.tar, t.threshold, t.achieved_far) for t in res.strict],
        "auc": res.auc,
    }


def synthetic_ijb(n_images: int, n_gallery: int, n_probe: int, n_pairs: int, n_genuine: int, dim: int) -> dict:
    """An IJB-C-shaped release in memory: one gallery template per subject and probe templates of
    the same subjects; images grouped in media (several frames of a video share one); raw features
    = 0.6 × subject centre + template nuisance + image noise, at a per-image quality scale (the
    norm), and their mirrors (genuine template cosines ≈ 0.26, impostors ≈ 0 ± 0.04); pairs = each of the
    first `n_genuine` probes with its subject's gallery template, then random probe × gallery
    impostor pairs (IJB-C 1:1: 3,531 gallery and 19,593 probe templates, 469,375 images,
    15,658,489 pairs of which 19,557 genuine). Template ids are shuffled."""
    rng = np.random.default_rng(1)
    n_t = n_gallery + n_probe
    subject = np.r_[np.arange(n_gallery), rng.integers(0, n_gallery, n_probe)]
    tmpl = np.r_[np.arange(n_t), rng.integers(0, n_t, n_images - n_t)]  # every template has an image
    rng.shuffle(tmpl)
    media = tmpl * 8 + rng.integers(0, 8, n_images)  # up to 8 media per template
    template_id = rng.permutation(n_t) + 1
    centres = rng.standard_normal((n_gallery, dim), dtype=np.float32)
    nuisance = rng.standard_normal((n_t, dim), dtype=np.float32)  # pose / session, shared in a template
    quality = rng.uniform(5.0, 25.0, (n_images, 1)).astype(np.float32)
    feats = rng.standard_normal((n_images, dim), dtype=np.float32)
    feats += 0.6 * centres[subject[tmpl]]
    feats += nuisance[tmpl]
    quality /= np.float32(np.sqrt(dim))
    feats *= quality
    flips = rng.standard_normal((n_images, dim), dtype=np.float32)
    flips *= 0.3 * quality
    flips += feats
    probe = n_gallery + np.r_[np.arange(n_genuine), rng.integers(0, n_probe, n_pairs - n_genuine)]
    other = (subject[probe[n_genuine:]] + rng.integers(1, n_gallery, n_pairs - n_genuine)) % n_gallery
    gallery = np.r_[subject[probe[:n_genuine]], other]  # gallery template g belongs to subject g
    return {
        "features": feats,
        "features_flip": flips,
        "faceness": rng.uniform(0.3, 1.0, n_images).astype(np.float32),
        "templates": template_id[tmpl],
        "medias": media,
        "p1": template_id[gallery],
        "p2": template_id[probe],
        "labels": np.r_[np.ones(n_genuine, bool), np.zeros(n_pairs - n_genuine, bool)],
    }


def _timed(fn, *args) -> tuple[dict, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    res = fn(*args)
    return res, time.perf_counter() - wall, time.process_time() - cpu


def bench_ijb(sizes: dict, dim: int = 512, baseline: bool = True) -> dict:
    """Whole IJB evaluation from features (pooling, scoring, metrics, the three output files), the
    library against the baseline, on the same synthetic release; and how far their results differ."""
    from facekd.evaluate.ijb import IJB_FARS

    data = synthetic_ijb(**sizes, dim=dim)
    res = {**sizes, "dim": dim}
    with tempfile.TemporaryDirectory() as tmp:
        new, res["library_wall_s"], res["library_cpu_s"] = _timed(_library_evaluate, data, IJB_FARS, Path(tmp))
    res["library_auc"] = new["auc"]
    res["library_tar_insightface"] = [t[0] for t in new["insightface"]]
    res["library_tar_strict"] = [t[0] for t in new["strict"]]
    if not baseline:
        return res
    with tempfile.TemporaryDirectory() as tmp:
        old, res["baseline_wall_s"], res["baseline_cpu_s"] = _timed(_baseline_evaluate, data, IJB_FARS, Path(tmp))
    res["speedup_wall"] = res["baseline_wall_s"] / res["library_wall_s"]
    res["speedup_cpu"] = res["baseline_cpu_s"] / res["library_cpu_s"]
    res["max_abs_score_diff"] = float(np.abs(new["scores"] - old["scores"]).max())
    res["auc_diff"] = new["auc"] - old["auc"]
    for conv in ("insightface", "strict"):
        res[f"same_tar_{conv}"] = [a[0] == b[0] for a, b in zip(new[conv], old[conv])]
        res[f"same_achieved_far_{conv}"] = [a[2] == b[2] for a, b in zip(new[conv], old[conv])]
        res[f"achieved_far_{conv}"] = {"library": [a[2] for a in new[conv]], "baseline": [b[2] for b in old[conv]]}
        res[f"max_threshold_diff_{conv}"] = max(
            abs(a[1] - b[1]) if math.isfinite(a[1]) else 0.0 for a, b in zip(new[conv], old[conv])
        )
    return res


def bench_streaming(n: int, dim: int, chunk: int) -> dict:
    from facekd.evaluate.streaming import streaming_tar_at_far

    rng = np.random.default_rng(2)
    ids = -(-n // 4)  # identities of 4 images
    centres = rng.standard_normal((ids, dim)).astype(np.float32)
    labels = np.repeat(np.arange(ids), 4)[:n]
    x = centres[labels] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = streaming_tar_at_far(x, labels, fars=(1e-6,), chunk=chunk, device="cpu")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pairs = n * (n - 1) // 2
    return {
        "n": n,
        "dim": dim,
        "chunk": chunk,
        "pairs": pairs,
        "n_impostor": res.n_impostor,
        "seconds": res.seconds,
        "pairs_per_s": res.pairs_per_second,
        "tar_at_1e-6": res.tar_at_far[0].tar,
        "peak_rss_growth_mib": (rss1 - rss0) / 1024,
        "embeddings_mib": x.nbytes / 2**20,
    }


IJBC_SIZES = {
    "n_images": 469_375,
    "n_gallery": 3_531,
    "n_probe": 19_593,
    "n_pairs": 15_658_489,
    "n_genuine": 19_557,
}
IJB_QUICK = {"n_images": 20_000, "n_gallery": 300, "n_probe": 1_500, "n_pairs": 300_000, "n_genuine": 1_500}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--parts", default="read,ijb,streaming", help="comma-separated subset to run")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument("--no-baseline", action="store_true", help="ijb: time the library path only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    results = {"threads": args.threads}
    parts = set(args.parts.split(","))
    if "read" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            results["read"] = bench_read(200 if q else 2000, Path(tmp))
    if "ijb" in parts:
        results["ijb"] = bench_ijb(IJB_QUICK if q else IJBC_SIZES, baseline=not args.no_baseline)
    if "streaming" in parts:
        n = 2_000 if q else math.ceil((1 + math.sqrt(1 + 8e9)) / 2)  # n(n-1)/2 >= 1e9
        results["streaming"] = bench_streaming(n, 512, 4096)
    print(json.dumps(results, indent=1), flush=True)
    if args.out:
        save_json(args.out, results)


if __name__ == "__main__":
    main()
