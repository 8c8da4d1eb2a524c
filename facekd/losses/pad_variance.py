"""Per-sample PAD variance of a trained run over a dataset: σ², gap and what they correlate with.

`per_sample_variance(task, dataset)` runs a trained task's student (eval mode, no augmentation) and
its PAD distiller over every row of `dataset`, exactly as in training but with the variance
branch's BN in eval mode, and returns per-sample arrays. `pad_run_statistics` adds
`facekd.losses.weighting.pad_stats.pad_statistics` over them, with the dataset's groups,
nuisances, hard / noisy flags and the teacher's own errors when the dataset carries them.
`facekd pad-variance RUN [DATA]` (facekd.losses.commands) writes both next to the run.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from facekd.losses.distiller import Distiller, Features
from facekd.losses.weighting.pad_stats import pad_statistics, teacher_margin

__all__ = ["pad_run_statistics", "per_sample_variance"]

# the step at which a trained distiller is evaluated: past any warm-up and L2 stage
AFTER_TRAINING = 2**62


def _student_features(task: nn.Module, distiller: Distiller, x: torch.Tensor) -> Features:
    """What the task hands its distiller for images x (the distilled feature, maps if read)."""
    from facekd.tasks import MetricTask

    if isinstance(task, MetricTask):  # the feature before or after the BNNeck, as in training
        before, after, maps = task.features(x)
        return Features(after if task.distill_feat == "after" else before, maps)
    student = cast(nn.Module, task.student)
    if distiller.needs_maps:
        emb, maps = student(x, return_features=True)
        return Features(emb, maps)
    return Features(student(x))


@torch.no_grad()
def per_sample_variance(task: nn.Module, dataset, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per row of `dataset.without_augmentation()`: "log_sigma2" (mean ln σ² of the sample),
    "sigma2" (mean σ²), "gap" (‖s − t‖², summed over elements), "effective_weight" (λ-free factor
    of uniform L2 that weighs the sample as PAD does), "teacher" (the teacher's embedding (N, d),
    for its errors) and "labels".

    task: a trained task with a PAD `Distiller` (`task.distiller`) and its teacher provider
    (`task.teacher`: a cached teacher must have been computed on these rows).
    """
    distiller = getattr(task, "distiller", None)
    if not isinstance(distiller, Distiller) or not distiller.is_pad:
        raise ValueError("pad-variance needs a run trained with weighting: pad (its distiller has no variance branch)")
    rows = dataset.without_augmentation()
    teacher = cast(nn.Module, task.teacher)
    check = getattr(teacher, "check_dataset", None)
    if check is not None:
        check(rows)
    was_training = task.training
    task.eval()
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("log_sigma2", "sigma2", "gap", "effective_weight")}
    out |= {"teacher": [], "labels": []}
    device = next(task.parameters()).device
    try:
        for batch in DataLoader(rows, batch_size=batch_size, shuffle=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            student = _student_features(task, distiller, batch["image"])
            target = teacher(batch, distiller.needs_maps, False)
            distiller(student, target, AFTER_TRAINING)
            stats = distiller.per_sample_stats
            for key, name in (("log_sigma2", "log_variance"), ("sigma2", "variance"), ("gap", "gap_sum")):
                out[key].append(_numpy(stats[name]))
            out["effective_weight"].append(_numpy(stats["effective_weight"]))
            out["teacher"].append(target.embedding.float().cpu().numpy())
            out["labels"].append(batch["label"].cpu().numpy())
    finally:
        task.train(was_training)
    return {k: np.concatenate(v) for k, v in out.items()}


def _numpy(x: torch.Tensor | None) -> np.ndarray:
    if x is None:
        raise ValueError("the distiller reported no PAD statistics for this batch")
    return x.float().cpu().numpy()


def dataset_annotations(dataset) -> dict[str, Any]:
    """What a dataset records about its samples, for `pad_statistics`: groups, nuisance strengths
    (|yaw| for the signed yaw angle) and boolean flags (hard images, noisy labels), when present."""
    out: dict[str, Any] = {}
    groups = getattr(dataset, "groups", None)
    if groups is not None:
        out["groups"] = np.asarray(groups)
    nuisance = getattr(dataset, "nuisance", None)
    if isinstance(nuisance, dict):
        out["nuisance"] = {
            (f"|{k}|" if k == "yaw" else k): (np.abs(v) if k == "yaw" else v) for k, v in nuisance.items()
        }
    flags = {name: getattr(dataset, name) for name in ("hard", "noisy") if getattr(dataset, name, None) is not None}
    if flags:
        out["flags"] = flags
    return out


def pad_run_statistics(samples: dict[str, np.ndarray], dataset) -> dict:
    """`pad_statistics` of `per_sample_variance` output over `dataset`, with its annotations and
    the teacher's errors (nearest class centre of its own embeddings), plus the mean effective weight."""
    stats = pad_statistics(
        samples["log_sigma2"],
        samples["gap"],
        margin=teacher_margin(samples["teacher"], samples["labels"]),
        **dataset_annotations(dataset),
    )
    stats["mean_effective_weight"] = float(np.mean(samples["effective_weight"]))
    return stats
