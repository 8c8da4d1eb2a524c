"""Does SynthPersons need a trained network? A small network trained briefly against the same
network untrained, on the Market-1501 protocol (CMC / mAP, `facekd.evaluate.reid`).

On colour-coded data a random network already retrieves people by their colours; SynthPersons'
camera colour casts, scenes and viewpoints are meant to defeat that. `python -m
facekd.synthpersons.probe` prints both networks' metrics (docs/data.md).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from facekd.evaluate.reid import ReidResult, evaluate_reid_features
from facekd.models.heads import SoftmaxHead
from facekd.models.small_cnn import SmallCNN
from facekd.synthfaces.probe import fit_probe, images_to_tensor


def reid_probe_net(seed: int = 0, width: int = 16, dim: int = 128) -> SmallCNN:
    """The probe network, freshly initialised from `seed` (eval mode)."""
    torch.manual_seed(seed)
    return SmallCNN(embedding_size=dim, width=width).eval()


def train_reid_probe(
    ds, steps: int = 400, batch_size: int = 64, lr: float = 0.05, seed: int = 0, width: int = 16, dim: int = 128
) -> SmallCNN:
    """`reid_probe_net(seed)` trained on `ds` (`.images`, `.labels`, `.num_classes`) with softmax
    cross-entropy (label smoothing 0.1), SGD momentum 0.9, weight decay 5e-4, cosine decay, random
    horizontal flips. Returns it in eval mode."""
    model = reid_probe_net(seed, width, dim)
    head = SoftmaxHead(dim, int(ds.num_classes))
    fit_probe(model, head, ds, steps, batch_size, lr, seed, label_smoothing=0.1)
    return model


@torch.no_grad()
def reid_metrics(model: torch.nn.Module, query, gallery, batch_size: int = 256) -> ReidResult:
    """CMC / mAP of `model`'s cosine ranking of `gallery` for each of `query` (Market-1501 rules)."""

    def features(ds) -> np.ndarray:
        out = [model(images_to_tensor(ds.images[s : s + batch_size])) for s in range(0, len(ds), batch_size)]
        return F.normalize(torch.cat(out), dim=1).numpy()

    return evaluate_reid_features(
        features(query), features(gallery), query.pids, gallery.pids, query.camids, gallery.camids
    )


def _main() -> None:
    from facekd.synthpersons import SynthPersonsConfig, make_synthpersons

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--set", action="append", default=[], help="SynthPersonsConfig override key=json")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    c0 = time.process_time()
    data = make_synthpersons(SynthPersonsConfig.preset(args.preset, **over))
    c1 = time.process_time()
    trained = train_reid_probe(data.train, steps=args.steps, seed=args.seed)
    c2 = time.process_time()
    report = {
        "render_cpu_s": round(c1 - c0, 1),
        "train_cpu_s": round(c2 - c1, 1),
        "random": reid_metrics(reid_probe_net(args.seed), data.query, data.gallery).to_dict(),
        "trained": reid_metrics(trained, data.query, data.gallery).to_dict(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    _main()
