"""Evaluate a trained student as its field reports it, from a run directory or a checkpoint.

    task classification  top-1 / top-5 accuracy and per-class accuracy (mean and worst class)
                         of the backbone + its linear head, on a split of the data
    task metric          leave-one-out Recall@K (CUB-200 protocol: every image queries all the
                         others of the split, by cosine similarity) on a split whose classes the
                         student did not train on; on a re-ID kind (market1501 / dukemtmc) CMC
                         rank-1/5/10, mAP and mINP of its query split against its gallery split
                         (Market-1501 protocol)
    task face            verification (`facekd eval` without `--task`: `.bin` sets or SynthFaces pairs)

A run directory (`facekd train`) holds `config.yaml` (the resolved run config: task, model, data),
`backbone.pth` (the student's state_dict, insightface key names: what `facekd eval --bin`,
`facekd embed` and insightface load) and `head.pth` beside it when the task has a head: the head's
state_dict, for task classification a Linear layer (`weight` (C, d), `bias` (C,)), for face and
metric the margin / softmax head's class centres (`weight` (C, d)). `teacher: {head: …/head.pth}`
gives a student's online teacher its logits from the same file.

`final_metrics(cfg, task)` is what `facekd train` prints at the end: the last epoch's mean
training accuracy and loss (from metrics.jsonl) and, when the run holds out `data.val_fraction`,
the same metrics as `facekd eval --split val` on the held-out rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from facekd.config import DataConfig, RunConfig, build_dataset, load_config
from facekd.evaluate.model_eval import evaluate_classifier, predict_dataset
from facekd.evaluate.reid import evaluate_reid_features, recall_at_k
from facekd.utils import load_torch

REID_KINDS = ("market1501", "dukemtmc")
TASKS = ("face", "classification", "metric")


@dataclass
class Student:
    """A loaded student: backbone (eval mode, CPU), its head (or None), the run config (or None)."""

    model: nn.Module
    head: nn.Module | None
    cfg: RunConfig | None


def run_config_of(checkpoint: Path) -> RunConfig | None:
    """The resolved run config of a run directory, or of the run directory holding the
    checkpoint file (`config.yaml` there); None without one."""
    checkpoint = Path(checkpoint)
    path = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "config.yaml"
    return load_config(path) if path.is_file() else None


def load_linear_head(path: Path, dim: int) -> nn.Linear:
    """The Linear classifier saved as `path` (a head.pth: `weight` (C, dim), `bias` (C,))."""
    if not path.is_file():
        raise FileNotFoundError(f"head {path} does not exist (task classification needs the run's head.pth)")
    state = load_torch(path, "classifier head")
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != dim or "bias" not in state:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        raise ValueError(
            f"head {path}: expected a Linear classifier, 'weight' (num_classes, {dim}) and 'bias', for the "
            f"{dim}-d backbone; got weight {shape}, keys {sorted(state) if isinstance(state, dict) else type(state)}"
        )
    head = nn.Linear(dim, int(weight.shape[0]))
    head.load_state_dict(state)
    return head.eval()


def load_student(
    checkpoint: Path, arch: str | None, task: str, head: Path | None = None, input_size: Any = None
) -> Student:
    """The student of a run directory (its config gives arch, model options and input size) or of
    a backbone file with `arch`; for task classification with its linear head (`head`, default
    head.pth beside the backbone)."""
    from facekd.models import embedding_dim
    from facekd.models.checkpoint import load_backbone, resolve_backbone_path

    cfg = run_config_of(checkpoint)
    arch = arch or (cfg.model.arch if cfg is not None else None)
    if arch is None:
        raise ValueError(f"{checkpoint}: no config.yaml to read the architecture from; give --arch")
    file = resolve_backbone_path(checkpoint)
    kw: dict[str, Any] = {}
    if cfg is not None and arch == cfg.model.arch:
        kw = dict(cfg.model.options)
        input_size = input_size or cfg.model.input_size
    if input_size is not None:
        kw["input_size"] = input_size
    model = load_backbone(file, arch, **kw)
    classifier = None
    if task == "classification":
        size = input_size or getattr(model, "input_size", None) or 112
        classifier = load_linear_head(head or file.parent / "head.pth", embedding_dim(model, size))
    return Student(model, classifier, cfg)


def task_of(cfg: RunConfig | None, task: str | None) -> str:
    """`task` when given, else the run's task; face (verification) without either."""
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"--task must be one of {' / '.join(TASKS)}, got {task!r}")
        return task
    return cfg.task if cfg is not None else "face"


def split_config(data: DataConfig, split: str) -> DataConfig:
    """`data` with `split` and no random augmentation (evaluation sees every image as it is)."""
    raw = data.model_dump(exclude={"augment"}, exclude_defaults=True)
    try:
        return DataConfig.model_validate({**raw, "kind": data.kind, "split": split})
    except ValidationError as e:
        raise ValueError("; ".join(str(x["msg"]).removeprefix("Value error, ") for x in e.errors())) from None


def evaluate_classification(student: Student, data: DataConfig, batch_size: int = 256) -> dict:
    """Top-1 / top-5 (top-k up to the class count) and per-class accuracy on `data`."""
    assert isinstance(student.head, nn.Linear)  # load_student gives task classification its classifier
    dataset = build_dataset(data)
    ks = tuple(k for k in (1, 5) if k <= student.head.out_features)
    res = evaluate_classifier(student.model, student.head, dataset, ks=ks, batch_size=batch_size)
    return {"task": "classification", "split": data.split, **res.to_dict()}


def evaluate_metric(student: Student, data: DataConfig, ks: tuple[int, ...], batch_size: int = 256) -> dict:
    """Recall@K on `data` (leave-one-out), or CMC / mAP on a re-ID kind's query and gallery splits."""
    if data.kind in REID_KINDS:
        return _evaluate_reid(student.model, data, batch_size)
    features, labels = predict_dataset(student.model, build_dataset(data), batch_size=batch_size)
    usable = tuple(k for k in ks if k < len(labels))
    if not usable:
        raise ValueError(f"Recall@K: split {data.split} has {len(labels)} images, too few for K = {min(ks)}")
    res = recall_at_k(features, labels, usable)
    return {"task": "metric", "split": data.split, "n": len(labels), **{f"recall@{k}": v for k, v in res.items()}}


def _evaluate_reid(model: nn.Module, data: DataConfig, batch_size: int) -> dict:
    sides = {}
    for split in ("query", "gallery"):
        dataset = build_dataset(split_config(data, split))
        features, _ = predict_dataset(model, dataset, batch_size=batch_size)
        sides[split] = (features, np.asarray(dataset.pids), np.asarray(dataset.camids))
    (qf, qp, qc), (gf, gp, gc) = sides["query"], sides["gallery"]
    res = evaluate_reid_features(qf, gf, qp, gp, qc, gc).to_dict()
    return {"task": "metric", "split": "query/gallery", **res}


def format_result(res: dict) -> str:
    """One line of the metrics of `evaluate_classification` / `evaluate_metric` (percentages)."""
    if res["task"] == "classification":
        parts = [f"{k} {100 * res[k]:.2f}" for k in ("top1", "top5") if k in res]
        parts.append(f"mean per-class {100 * res['mean_per_class']:.2f}")
        parts.append(f"worst class {100 * res['worst_class_accuracy']:.2f}")
        return f"{res['split']}: " + "  ".join(parts) + f"  ({res['n']} images)"
    if "mAP" in res:
        ranks = "  ".join(f"rank{r} {100 * res[f'rank{r}']:.2f}" for r in (1, 5, 10) if f"rank{r}" in res)
        return f"{res['split']}: {ranks}  mAP {100 * res['mAP']:.2f}  mINP {100 * res['mINP']:.2f}"
    recalls = "  ".join(f"R@{k.split('@')[1]} {100 * v:.2f}" for k, v in res.items() if k.startswith("recall@"))
    return f"{res['split']}: {recalls}  ({res['n']} images)"


def evaluate_student(student: Student, task: str, data: DataConfig, ks=(1, 2, 4, 8), batch_size: int = 256) -> dict:
    """The metrics of `task` (classification or metric) of `student` on `data`."""
    if task == "classification":
        return evaluate_classification(student, data, batch_size)
    if task == "metric":
        return evaluate_metric(student, data, tuple(ks), batch_size)
    raise ValueError(f"evaluate_student: task {task!r} is evaluated by verification (facekd eval without --task)")


# --------------------------------------------------------------------------------------------
# what `facekd train` prints at the end of a run
# --------------------------------------------------------------------------------------------


def last_epoch_means(metrics_file: Path, epochs: int) -> dict[str, float]:
    """Mean of each logged value (loss, cls, acc, triplet, distill) over the records of the last
    of `epochs` epochs in metrics.jsonl. The trainer logs the last step, so the last record's
    `step` is the run's step count and an epoch is that count / `epochs` steps."""
    if not metrics_file.is_file():
        return {}
    records = []
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if isinstance(record, dict) and "step" in record and "loss" in record:
            records.append(record)
    if not records:
        return {}
    total = int(records[-1]["step"])
    first_of_last = total - total // max(1, epochs)
    chosen = [r for r in records if r["step"] > first_of_last]
    keys = [k for k in ("loss", "cls", "acc", "triplet", "distill") if any(k in r for r in chosen)]
    return {k: float(np.mean([r[k] for r in chosen if k in r])) for k in keys}


def final_metrics(cfg: RunConfig, task: nn.Module, batch_size: int = 256) -> dict[str, dict]:
    """{"train": the last epoch's mean logs, "val": the held-out metrics when the run holds out
    `data.val_fraction` and its task is classification or metric} of a trained run."""
    out: dict[str, dict] = {"train": last_epoch_means(cfg.run_dir / "metrics.jsonl", cfg.train.epochs)}
    if cfg.data.val_fraction is not None and cfg.task in ("classification", "metric"):
        head = getattr(task, "head", None) if cfg.task == "classification" else None
        student = Student(getattr(task, "student", task), head, cfg)
        out["val"] = evaluate_student(student, cfg.task, split_config(cfg.data, "val"), batch_size=batch_size)
    return out


def format_final(metrics: dict[str, dict]) -> str:
    """The lines `facekd train` prints after `done:` (nothing when nothing was logged)."""
    lines = []
    train = metrics.get("train") or {}
    if train:
        parts = [f"acc {100 * train['acc']:.2f}" if "acc" in train else ""]
        parts += [f"{k} {v:.4g}" for k, v in train.items() if k != "acc" and math.isfinite(v)]
        lines.append("train (last epoch, mean of logged steps): " + "  ".join(p for p in parts if p))
    if "val" in metrics:
        lines.append("val " + format_result(metrics["val"]))
    return "\n".join(lines)


__all__ = [
    "REID_KINDS",
    "TASKS",
    "Student",
    "evaluate_classification",
    "evaluate_metric",
    "evaluate_student",
    "final_metrics",
    "format_final",
    "format_result",
    "last_epoch_means",
    "load_linear_head",
    "load_student",
    "run_config_of",
    "split_config",
    "task_of",
]
