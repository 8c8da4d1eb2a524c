"""I/O and large-scale scoring benchmark (issue 6), in one run:

1. RecordIO read + JPEG decode, images/s in one process (= one DataLoader worker), against
   decoding the same JPEG bytes from an image folder with PIL; plus the header-only label scan.
2. IJB-C-sized template scoring: 15.7M template pairs over 23,124 synthetic 512-d template
   features (`facekd.evaluate.ijb.pair_scores`, insightface's 100k-pair batches), wall time.
3. Streaming impostor counting for strict TAR at FAR = 1e-6 over >= 1e9 all-to-all pairs
   (`facekd.evaluate.streaming.streaming_tar_at_far`), pairs/s and peak memory.

    .venv/bin/python benchmarks/io.py            # full sizes
    .venv/bin/python benchmarks/io.py --quick    # small sizes, for a smoke run
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


def bench_ijb(n_pairs: int, n_templates: int, dim: int) -> dict:
    from facekd.evaluate.ijb import pair_scores

    rng = np.random.default_rng(1)
    feats = rng.standard_normal((n_templates, dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    ids = np.arange(1, n_templates + 1, dtype=np.int64)
    p1 = rng.integers(1, n_templates + 1, n_pairs)
    p2 = rng.integers(1, n_templates + 1, n_pairs)
    t = time.perf_counter()
    scores = pair_scores(ids, feats, p1, p2)
    sec = time.perf_counter() - t
    return {
        "n_pairs": n_pairs,
        "n_templates": n_templates,
        "dim": dim,
        "seconds": sec,
        "pairs_per_s": n_pairs / sec,
        "score_mean": float(scores.mean()),
    }


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--parts", default="read,ijb,streaming", help="comma-separated subset to run")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    results = {"threads": args.threads}
    parts = set(args.parts.split(","))
    if "read" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            results["read"] = bench_read(200 if q else 2000, Path(tmp))
    if "ijb" in parts:
        results["ijb"] = bench_ijb(200_000 if q else 15_658_489, 23_124, 512)  # IJB-C 1:1 pair count
    if "streaming" in parts:
        n = 2_000 if q else math.ceil((1 + math.sqrt(1 + 8e9)) / 2)  # n(n-1)/2 >= 1e9
        results["streaming"] = bench_streaming(n, 512, 4096)
    print(json.dumps(results, indent=1), flush=True)
    if args.out:
        from facekd.utils import save_json

        save_json(args.out, results)


if __name__ == "__main__":
    main()
