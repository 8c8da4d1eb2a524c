"""Run a backbone over evaluation data: insightface `.bin` sets, IJB-B/C releases, and any facekd
dataset for classification and retrieval students.

`evaluate_bin(model, path)` is insightface's `CallBackVerification` for one `.bin` (Accuracy-Flip
with XNorm, 10 folds); `embed_ijb(model, root, target)` gives the raw per-image features (and those
of the mirrored images) of an IJB release in its `<t>_face_tid_mid.txt` row order, which
`facekd.evaluate.ijb.evaluate_ijb` pools and scores. The model sees `.bin` and IJB images at its
own input size (`model.input_size`, else 112).

`evaluate_classifier(model, head, dataset)` gives top-k and per-class accuracy of a backbone +
linear head (`facekd.evaluate.classification`); `evaluate_retrieval(model, dataset)` gives
leave-one-out Recall@K of a metric-learning student (`facekd.evaluate.reid.recall_at_k`). Both take
the dataset as given: pass one without random augmentation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from facekd.data.binset import load_bin
from facekd.evaluate.classification import ClassificationResult, classification_accuracy
from facekd.evaluate.reid import recall_at_k
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


@torch.no_grad()
def predict_dataset(
    model: nn.Module, dataset, head: nn.Module | None = None, batch_size: int = 256, num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of `model` (or of `head(model(x))`) for every item of `dataset`, in order, and the
    items' labels → (float32 (N, k), int64 (N,)). Model and head run in eval mode on the model's
    device and get their modes back afterwards."""
    modules = [m for m in (model, head) if m is not None]
    modes, dev = [m.training for m in modules], _device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    outputs, labels = [], []
    try:
        for m in modules:
            m.eval()
        for batch in loader:
            out = model(batch["image"].to(dev))
            outputs.append((out if head is None else head(out)).float().cpu())
            labels.append(batch["label"].reshape(-1).long())
    finally:
        for m, was in zip(modules, modes):
            m.train(was)
    if not outputs:
        raise ValueError("predict_dataset: the dataset is empty")
    return torch.cat(outputs).numpy(), torch.cat(labels).numpy()


def evaluate_classifier(
    model: nn.Module,
    head: nn.Module,
    dataset,
    ks: tuple[int, ...] = (1, 5),
    batch_size: int = 256,
    num_workers: int = 0,
) -> ClassificationResult:
    """Top-k and per-class accuracy of backbone `model` + linear `head` (`head(embedding) -> logits`,
    as `ClassificationTask` trains it) on `dataset` (labels in [0, number of logits))."""
    logits, labels = predict_dataset(model, dataset, head, batch_size, num_workers)
    return classification_accuracy(logits, labels, ks)


def evaluate_retrieval(
    model: nn.Module,
    dataset,
    ks: tuple[int, ...] = (1, 2, 4, 8),
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict[int, float]:
    """Leave-one-out Recall@K of `model`'s embeddings on `dataset` (CUB-200 style: every item queries
    all the others by cosine similarity; a hit is one of its class among the K nearest)."""
    features, labels = predict_dataset(model, dataset, None, batch_size, num_workers)
    return recall_at_k(features, labels, ks)


__all__ = [
    "embed_ijb",
    "embed_raw_flip",
    "evaluate_bin",
    "evaluate_classifier",
    "evaluate_retrieval",
    "model_image_size",
    "predict_dataset",
]
