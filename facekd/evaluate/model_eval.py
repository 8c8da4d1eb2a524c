"""Run a backbone over the real-data evaluation sets: insightface `.bin` sets and IJB-B/C releases.

`evaluate_bin(model, path)` is insightface's `CallBackVerification` for one `.bin` (Accuracy-Flip
with XNorm, 10 folds); `embed_ijb(model, root, target)` gives the raw per-image features (and those
of the mirrored images) of an IJB release in its `<t>_face_tid_mid.txt` row order, which
`facekd.evaluate.ijb.evaluate_ijb` pools and scores. The model sees images at its own input size
(`model.input_size`, else 112).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from facekd.data.binset import load_bin
from facekd.evaluate.verification import accuracy_flip


def model_image_size(model: nn.Module, default: int = 112) -> int:
    """The square input side a model expects: `model.input_size` (int or (H, W) with H == W), else `default`."""
    size = getattr(model, "input_size", default)
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"{type(model).__name__}: input_size {tuple(size)} is not square; face sets need H == W")
        size = size[0]
    return int(size)


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def _embed_pairs(model: nn.Module, batches) -> tuple[np.ndarray, np.ndarray]:
    """Raw embeddings of an iterable of (images, mirrored images) batches → two float32 (N, d);
    the model runs in eval mode on its own device and gets its mode back afterwards."""
    was, dev = model.training, _device(model)
    model.eval()
    orig, flip = [], []
    try:
        for x, x_flip in batches:
            orig.append(model(x.to(dev)).float().cpu())
            flip.append(model(x_flip.to(dev)).float().cpu())
    finally:
        model.train(was)
    if not orig:
        raise ValueError("no images to embed")
    return torch.cat(orig).numpy(), torch.cat(flip).numpy()


def embed_raw_flip(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Raw (un-normalised) embeddings of uint8 RGB images (N, H, W, 3) and of their mirrors → two float32 (N, d)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"embed_raw_flip: expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")

    def batches():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            yield x, torch.flip(x, dims=[3])

    return _embed_pairs(model, batches())


def evaluate_bin(model: nn.Module, path: str | os.PathLike, batch_size: int = 256, nfolds: int = 10) -> dict:
    """insightface's verification of `model` on one `.bin` set (as CallBackVerification / eval/verification.py).

    Images are decoded (RGB) and resized to the model's input size, each image and its mirror are
    embedded, the pair embedding is normalize(orig + flip), accuracy is the 10-fold protocol on
    squared L2 distances; XNorm is the mean raw embedding norm over all 4N embeddings.
    Returns {"name": file stem, "path", "n_pairs", "xnorm", "accuracy_flip", "std", "thresholds",
    "fold_accuracies"} (accuracies as fractions in [0, 1]).
    """
    path = Path(path)
    images, issame = load_bin(path, image_size=model_image_size(model))
    orig, flip = embed_raw_flip(model, images, batch_size)
    res = accuracy_flip(orig, flip, issame, nfolds)
    return {
        "name": path.stem,
        "path": str(path),
        "n_pairs": int(issame.size),
        "xnorm": res.xnorm,
        "accuracy_flip": res.mean,
        "std": res.std,
        "thresholds": res.accuracy.thresholds.tolist(),
        "fold_accuracies": res.accuracy.fold_accuracies.tolist(),
    }


def embed_ijb(
    model: nn.Module,
    root: str | os.PathLike,
    target: str = "IJBC",
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw features of every face of an IJB release, aligned to the ArcFace template at the model's
    input size, and of the mirrored faces → (features, features_flip), float32 (N, d) each, rows in
    `<root>/meta/<target>_face_tid_mid.txt` order (what `facekd eval-ijb --features` expects)."""
    from facekd.data.ijb import IJBDataset

    dataset = IJBDataset(root, target, image_size=model_image_size(model), flip=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc=f"embed {target}", unit="batch")
    return _embed_pairs(model, ((b["image"], b["image_flip"]) for b in loader))


__all__ = ["embed_ijb", "embed_raw_flip", "evaluate_bin", "model_image_size"]
