"""Measure what SynthFaces models, with a small network trained from scratch (no distillation).

The data-side properties of SynthFaces are claims about what a face model learns from it; this
module measures them so that tests and docs/data.md report numbers instead of intentions:

* `train_probe`: a `SmallCNN` trained from scratch with ArcFace on a train split, a fixed number of
  steps (the same every time, so the numbers are reproducible);
* `tar_by_severity`: TAR of genuine pairs binned by the larger nuisance severity of the two images
  (thresholds set by all impostors): identity information falls with nuisance strength;
* `tar_by_group`: each group's TAR@FAR over *all* within-group pairs of a split, with a bootstrap
  over identities: rarer groups' own features are learned less.

`python -m facekd.synthfaces.probe` prints the measurements for the demo's data (docs/data.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from facekd.evaluate.verification import RankedScores
from facekd.models.heads import ArcFaceHead
from facekd.models.small_cnn import SmallCNN


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def fit_probe(
    model: torch.nn.Module,
    head: torch.nn.Module,
    ds,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup_steps: int = 0,
    label_smoothing: float = 0.0,
) -> torch.nn.Module:
    """`model` trained with `head` on `ds` (`.images` uint8 (N, H, W, 3), `.labels`): cross-entropy
    on the head's logits, SGD momentum 0.9, weight decay 5e-4, linear warm-up over `warmup_steps`
    then cosine decay over `steps`, random horizontal flips, batches drawn by `seed`. Returns the
    model in eval mode. The one loop of the data probes (faces and persons)."""
    rng = np.random.default_rng(seed)
    x_all, y_all = images_to_tensor(ds.images), torch.from_numpy(np.asarray(ds.labels, np.int64))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    warm = max(1, warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
    )
    model.train()
    order = np.empty(0, np.int64)
    for _ in range(steps):
        if order.size < batch_size:
            order = np.concatenate([order, rng.permutation(len(y_all))])
        idx, order = torch.from_numpy(order[:batch_size]), order[batch_size:]
        x = x_all[idx]
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(head(model(x), y_all[idx]), y_all[idx], label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def train_probe(
    ds, steps: int = 600, batch_size: int = 128, lr: float = 0.1, seed: int = 0, width: int = 32, dim: int = 128
) -> SmallCNN:
    """A SmallCNN (`width`, `dim`-d) trained from scratch on `ds` (an ArrayDataset: `.images`,
    `.labels`) with ArcFace (s = 32, m = 0.3) by `fit_probe`, warm-up over 5 % of `steps`.
    Returns the model in eval mode."""
    torch.manual_seed(seed)
    model = SmallCNN(embedding_size=dim, width=width)
    head = ArcFaceHead(dim, int(ds.num_classes), s=32.0, m=0.3)
    fit_probe(model, head, ds, steps, batch_size, lr, seed, warmup_steps=max(1, steps // 20))
    return model.eval()


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """L2-normalised float32 (N, d) embeddings of uint8 (N, H, W, 3) images (flip-summed)."""
    out = []
    for s in range(0, len(images), batch_size):
        x = images_to_tensor(images[s : s + batch_size])
        out.append(F.normalize(model(x) + model(x.flip(-1)), dim=1))
    return torch.cat(out).numpy()


def tar_by_severity(emb: np.ndarray, ds, pairs, edges=(0.0, 1e-6, 0.5, 0.8, 0.9, 1.0001), far: float = 1e-2) -> list:
    """Genuine pairs of `pairs` (rows of `ds`) binned by the larger severity of their two images
    (bins [edges[i], edges[i+1])), each bin's TAR at the strict threshold for `far` set by all
    impostors, and its mean genuine cosine. The first bin (severity 0) holds easy pairs."""
    scores = np.einsum("ij,ij->i", emb[pairs.a], emb[pairs.b]).astype(np.float64)
    y = np.asarray(pairs.issame, bool)
    threshold = RankedScores(scores, y).tar_at_far([far], "strict")[0].threshold
    sev = np.maximum(ds.severity[pairs.a], ds.severity[pairs.b])
    rows = []
    for lo, hi in itertools.pairwise(edges):
        m = y & (sev >= lo) & (sev < hi)
        rows.append(
            {
                "severity": [float(lo), float(min(hi, 1.0))],
                "n_genuine": int(m.sum()),
                "tar": float(np.mean(scores[m] > threshold)) if m.any() else float("nan"),
                "mean_genuine_cos": float(scores[m].mean()) if m.any() else float("nan"),
            }
        )
    return rows


def _group_pairs(labels: np.ndarray, rows: np.ndarray, emb: np.ndarray):
    """All pairs i < j of `rows`: scores, same-identity flags, and the label of i."""
    e = emb[rows]
    iu, ju = np.triu_indices(rows.size, 1)
    scores = (e @ e.T)[iu, ju].astype(np.float64)
    return scores, labels[rows][iu] == labels[rows][ju], labels[rows][iu]


def tar_by_group(emb: np.ndarray, ds, far: float = 1e-3, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per group of `ds` (an evaluation split): TAR at the strict threshold for `far` among *all*
    within-group impostor pairs, over all within-group genuine pairs, with a 95 % bootstrap
    interval over identities (threshold held fixed). Also per group its share of identities."""
    rng = np.random.default_rng(seed)
    labels, groups = np.asarray(ds.labels), np.asarray(ds.groups)
    out = {}
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        scores, same, first = _group_pairs(labels, rows, emb)
        threshold = RankedScores(scores, same).tar_at_far([far], "strict")[0].threshold
        ids, inv = np.unique(first[same], return_inverse=True)
        hits = np.bincount(inv, weights=scores[same] > threshold, minlength=ids.size)
        counts = np.bincount(inv, minlength=ids.size).astype(float)
        boot = rng.integers(0, ids.size, (n_boot, ids.size))
        tars = hits[boot].sum(1) / counts[boot].sum(1)
        out[int(g)] = {
            "identities": int(ids.size),
            "n_genuine": int(same.sum()),
            "n_impostor": int((~same).sum()),
            "tar": float(hits.sum() / counts.sum()),
            "ci95": [float(np.quantile(tars, 0.025)), float(np.quantile(tars, 0.975))],
            "boot": tars,
        }
    return out


def _main() -> None:
    from facekd.synthfaces import SynthFacesConfig, make_synthfaces

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--set", action="append", default=[], help="SynthFacesConfig override key=json")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    t0 = time.process_time()
    data = make_synthfaces(SynthFacesConfig.preset(args.preset, **over))
    t1 = time.process_time()
    model = train_probe(data.train, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    t2 = time.process_time()
    test = data.test
    emb = embed(model, test.images)
    scores = np.einsum("ij,ij->i", emb[data.pairs.a], emb[data.pairs.b])
    overall = RankedScores(scores, data.pairs.issame).tar_at_far([1e-2, 1e-3], "strict")
    report = {
        "render_cpu_s": round(t1 - t0, 1),
        "train_cpu_s": round(t2 - t1, 1),
        "overall": [t.to_dict() for t in overall],
        "by_severity": tar_by_severity(emb, test, data.pairs),
        "by_group": {
            f"far={far:g}": {
                g: {k: v for k, v in r.items() if k != "boot"} for g, r in tar_by_group(emb, test, far).items()
            }
            for far in (1e-2, 1e-3)
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    _main()
