"""The one builder: a validated `RunConfig` → everything a run needs, and `run_training`.

`facekd train`, ReFO stages and demo experiments are all RunConfigs assembled here, in this order
(the order fixes which random numbers each part draws, so the same seed gives the same weights):

    dataset  = build_dataset(cfg.data)                           facekd.data
    teacher  = build_teacher(cfg, dataset)                       a cache, an online checkpoint (+ head),
                                                                 or a checkpoint embedded once
    sampler  = build_sampler(cfg.sampler, dataset, seed, cache)  facekd.bias
    seed_everything(cfg.train.seed)
    task     = build_task(cfg, dataset, teacher)                 student, head, classification loss,
                                                                 distiller → Face / Classification / MetricTask

`run_record` is what the result depends on (config values, dataset content and augmentation,
the teacher's weights or cache, the sampler's description) as plain data; `run_training` locks
the run directory, checks that record against the one the directory holds (`run.json`) and only
then writes `config.yaml` and `run.json`, then trains (`facekd.train.train`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facekd import dist, store
from facekd.config import MetricConfig, RunConfig, TeacherConfig, build_dataset, build_sampler, save_config
from facekd.embed import EmbeddingCache, embed_dataset, model_checksum
from facekd.losses.classification import get_cls_loss
from facekd.losses.distiller import Distiller
from facekd.losses.metric import CenterLoss
from facekd.models import embedding_dim, get_model
from facekd.models.checkpoint import load_backbone, load_state_dict_checked
from facekd.models.heads import get_head
from facekd.sample_log import recorded
from facekd.tasks import (
    CachedTeacher,
    ClassificationTask,
    ClassifierTeacher,
    FaceTask,
    MetricTask,
    OnlineTeacher,
    TeacherProvider,
)
from facekd.train import RUN_ARTIFACTS, train
from facekd.utils import save_json, seed_everything

RUN_RECORD = "run.json"

# --------------------------------------------------------------------------------------------
# teacher
# --------------------------------------------------------------------------------------------


@dataclass
class Teacher:
    """A run's teacher: the provider the task calls, its embeddings of the training rows (when
    cached; samplers read them) and its identity as plain data (for the run record)."""

    provider: TeacherProvider
    cache: EmbeddingCache | None
    identity: dict


def input_size_of(cfg: RunConfig, dataset) -> int | tuple[int, int]:
    """The networks' input size: `model.input_size`, else the dataset's image size."""
    return cfg.model.input_size or dataset.image_size


def load_teacher_model(t: TeacherConfig, input_size: int | tuple[int, int]) -> nn.Module:
    """The teacher backbone of `t.checkpoint`; its embedding width is read from the weights
    (`load_backbone`, as `facekd eval` / `embed` / `export` do) unless `t.embedding_size` is given."""
    assert t.checkpoint is not None and t.arch is not None  # TeacherConfig guarantees both
    given: dict[str, Any] = {"embedding_size": t.embedding_size} if t.embedding_size is not None else {}
    return load_backbone(t.checkpoint, t.arch, input_size=input_size, **given)


def load_teacher_head(t: TeacherConfig, task: str, dim: int) -> nn.Module:
    """The teacher's head from `t.head` (a head.pth state_dict): Linear(dim, C) for task
    classification, else margin head `t.head_name`; C is read from its (C, dim) `weight`."""
    assert t.head is not None
    try:
        state = torch.load(t.head, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise ValueError(f"teacher head {t.head}: not a state_dict ({type(e).__name__}: {str(e)[:200]})") from None
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != dim:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        raise ValueError(
            f"teacher head {t.head}: expected a 'weight' of shape (num_classes, {dim}) for the teacher's "
            f"{dim}-d embedding, got {shape}"
        )
    num_classes = int(weight.shape[0])
    head = nn.Linear(dim, num_classes) if task == "classification" else get_head(t.head_name, dim, num_classes)
    load_state_dict_checked(head, state, source=f"teacher head {t.head}")
    return head.eval()


def build_teacher(cfg: RunConfig, dataset) -> Teacher:
    """`cfg.teacher` as a provider: a given cache; an online checkpoint (with its head when
    `teacher.head` is set); or a checkpoint embedded once into `run_dir/teacher_cache` from the
    un-augmented images (under torchrun each rank embeds its shard)."""
    t = cfg.teacher
    assert t is not None
    if t.cache is not None:
        cache = EmbeddingCache.open(t.cache)
        return Teacher(CachedTeacher(cache), cache, {"cache": cache.meta})
    model = load_teacher_model(t, input_size_of(cfg, dataset))
    if t.online:
        head = None
        if t.head is not None:
            head = load_teacher_head(t, cfg.task, embedding_dim(model, input_size_of(cfg, dataset)))
        identity = {"model_sha256": model_checksum(model), "head_sha256": model_checksum(head) if head else None}
        if cfg.task == "classification" and head is not None:
            return Teacher(ClassifierTeacher(model, head), None, identity)
        return Teacher(OnlineTeacher(model, head), None, identity)
    device = dist.resolve_device(cfg.train.device)
    cache = embed_dataset(model.to(device), dataset.without_augmentation(), cfg.run_dir / "teacher_cache", flip=t.flip)
    return Teacher(CachedTeacher(cache), cache, {"cache": cache.meta})


# --------------------------------------------------------------------------------------------
# task
# --------------------------------------------------------------------------------------------


def class_counts(dataset) -> np.ndarray:
    """Images per class, int64 (C,): what Class-Balanced and LDAM losses weight by."""
    return np.bincount(dataset.labels, minlength=dataset.num_classes)


def build_head(cfg: RunConfig, dim: int, num_classes: int) -> nn.Module | None:
    """Linear(dim, C) for task classification, else `cfg.head` (a margin or softmax head); None without one."""
    if cfg.head is None:
        return None
    if cfg.task == "classification":
        return nn.Linear(dim, num_classes)
    h = cfg.head
    return get_head(h.name, dim, num_classes, s=h.s, m=h.m, **h.options)


def build_cls_loss(cfg: RunConfig, dataset) -> nn.Module | None:
    """The per-sample classification loss of `cfg.cls_loss` (class counts supplied to CB / LDAM)."""
    if cfg.head is None:
        return None
    options = dict(cfg.cls_loss.options)
    if cfg.cls_loss.name in ("cb", "ldam"):
        options["class_counts"] = class_counts(dataset)
    return get_cls_loss(cfg.cls_loss.name, **options)


def build_distiller(
    cfg: RunConfig, student: nn.Module, dim: int, teacher: TeacherProvider | None, input_size, num_classes: int
) -> Distiller | None:
    """`Distiller.from_config` of `cfg.distill` between the student (width `dim`) and the teacher.

    The losses that live in a margin head get the training set's class count and, when the teacher
    has a head with class centres (`teacher.head`), its (C, d) weight."""
    if cfg.distill is None:
        return None
    assert teacher is not None  # RunConfig: distill needs a teacher
    d = cfg.distill
    return Distiller.from_config(
        {"loss": d.loss, "weighting": d.weighting, "lambda": d.lam, "normalize": d.normalize, "options": d.options},
        student_dim=dim,
        teacher_dim=teacher.embedding_dim(input_size),
        student=student,
        teacher=getattr(teacher, "model", None),
        input_size=input_size,
        num_classes=num_classes,
        class_centres=_class_centres(teacher),
    )


def _class_centres(teacher: TeacherProvider) -> torch.Tensor | None:
    """The (C, d) class centres of the teacher's margin head, or None (no head, or a Linear classifier)."""
    head = getattr(teacher, "head", None)
    weight = getattr(head, "weight", None)
    if head is None or isinstance(head, nn.Linear) or not isinstance(weight, torch.Tensor):
        return None
    return weight.detach()


def build_task(cfg: RunConfig, dataset, teacher: TeacherProvider | None = None) -> nn.Module:
    """The task of `cfg.task` (facekd.tasks) around a new student; `teacher` is the provider.

    face → FaceTask(student, head, cls_loss, distiller, teacher);
    classification → ClassificationTask(student, Linear(d, C), distiller, teacher, cls_loss);
    metric → MetricTask(student, head, cls_loss (None for ce: label-smoothed CE), triplet, center, ...).
    """
    input_size = input_size_of(cfg, dataset)
    m = cfg.model
    student = get_model(m.arch, embedding_size=m.embedding_size, input_size=input_size, **m.options)
    dim = embedding_dim(student, input_size)
    head = build_head(cfg, dim, dataset.num_classes)
    loss = build_cls_loss(cfg, dataset)
    distiller = build_distiller(cfg, student, dim, teacher, input_size, dataset.num_classes)
    teacher = teacher if distiller is not None else None
    if cfg.task == "classification":
        assert head is not None  # RunConfig: task classification needs a head
        return ClassificationTask(student, head, distiller=distiller, teacher=teacher, cls_loss=loss)
    if cfg.task == "metric":
        return _metric_task(cfg, dataset, student, dim, head, loss, distiller, teacher)
    return FaceTask(student, head=head, cls_loss=loss, distiller=distiller, teacher=teacher)


def _metric_task(cfg: RunConfig, dataset, student, dim, head, loss, distiller, teacher) -> MetricTask:
    m = cfg.metric or MetricConfig()
    return MetricTask(
        student,
        head=head,
        cls_loss=None if cfg.cls_loss.name == "ce" else loss,
        label_smoothing=m.label_smoothing,
        triplet_margin=m.triplet_margin,
        triplet_weight=m.triplet_weight,
        triplet_normalize=m.triplet_normalize,
        center=CenterLoss(dataset.num_classes, dim) if m.center_weight > 0 else None,
        center_weight=m.center_weight,
        bnneck=m.bnneck,
        distill_feat=m.distill_feat,
        distiller=distiller,
        teacher=teacher,
    )


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything `train()` needs for one RunConfig, and what its result depends on."""

    cfg: RunConfig
    dataset: Any
    teacher: Teacher | None
    sampler: Any
    task: nn.Module

    def record(self) -> dict:
        return run_record(self.cfg, self.dataset, self.teacher, self.sampler)


def build_run(cfg: RunConfig) -> Run:
    """Dataset, teacher, sampler, then (after seeding with `train.seed`) the task."""
    dataset = build_dataset(cfg.data)
    teacher = build_teacher(cfg, dataset) if cfg.teacher is not None else None
    sampler = build_sampler(cfg.sampler, dataset, cfg.train.seed, teacher.cache if teacher else None)
    seed_everything(cfg.train.seed)
    task = build_task(cfg, dataset, teacher.provider if teacher else None)
    return Run(cfg, dataset, teacher, sampler, task)


def describe_sampler(sampler) -> Any:
    """The sampler as plain data: None (uniform shuffle), an index array (hashed by content), or
    `sampler.describe()`. A sampler without `describe()` (an epoch function, the PK sampler) is
    recorded as None: `build_sampler` made it from `cfg.sampler`, the teacher's embeddings and the
    seed, which the record holds."""
    if sampler is None or isinstance(sampler, np.ndarray):
        return sampler
    describe = getattr(sampler, "describe", None)
    return describe() if describe is not None else None


def config_record(cfg: RunConfig) -> dict:
    """The config values a result depends on: all but `run_dir` (train's RESUMABLE settings are
    kept but never compared)."""
    return json.loads(cfg.model_dump_json(by_alias=True, exclude={"run_dir"}))


def run_record(cfg: RunConfig, dataset, teacher: Teacher | None, sampler) -> dict:
    """What a training run's result depends on, as plain data (see `facekd.store`)."""
    return store.plain(
        {
            "config": config_record(cfg),
            "dataset": {
                "fingerprint": str(dataset.fingerprint()),
                "augmentation": dataset.augmentation,
                "n": len(dataset),
            },
            "teacher": teacher.identity if teacher is not None else None,
            "sampler": describe_sampler(sampler),
        }
    )


def _saved_record(run_dir: Path) -> dict | None:
    path = run_dir / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["record"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a run record ({type(e).__name__}: {e})") from None


def _check_against_run_dir(cfg: RunConfig, now: dict) -> None:
    """RecordMismatch (one line) if run_dir holds a run whose record differs from `now`."""
    saved = _saved_record(cfg.run_dir)
    if saved is not None:
        hint = "use another run_dir, or start over with facekd train --no-resume (resume=False)"
        store.require_same(str(cfg.run_dir), saved, now, hint)


def run_training(cfg: RunConfig, resume: bool = True, progress: bool = True) -> nn.Module:
    """Build everything from `cfg` and train it in `cfg.run_dir`; returns the trained task.

    The run directory is locked for the whole call (a second process is refused, one line with
    the holder's pid). With `resume=False`, `done`, the old weights and the old record are removed
    first. With `resume=True` the config values, then the data / teacher / sampler, are checked
    against `run.json` before anything is written: a different run is refused and its files stay
    as they were. Then `config.yaml` (the resolved config) and `run.json` ({"key": content digest,
    "record"}) are written atomically and the task is trained: a finished run with the same record
    is reused, an unfinished one resumes; each epoch's sample list is saved as
    `run_dir/samples/epoch_XXX.npy` (`facekd.sample_log`). Under torchrun the process group is initialised first,
    so that a teacher cache is embedded one shard per rank.
    """
    dist.init_from_env()
    with store.run_lock(cfg.run_dir):
        if not resume and dist.is_main():
            store.invalidate(cfg.run_dir, [*RUN_ARTIFACTS, RUN_RECORD])
        if resume:
            _check_against_run_dir(cfg, {"config": config_record(cfg)})
        run = build_run(cfg)
        record = run.record()
        if resume:
            _check_against_run_dir(cfg, record)
        if dist.is_main():
            save_config(cfg, cfg.run_dir / "config.yaml")
            save_json(cfg.run_dir / RUN_RECORD, {"key": store.result_key(record), "record": record})
        sampler = recorded(run.sampler, run.dataset, cfg.train.seed, cfg.run_dir)  # run_dir/samples/epoch_*.npy
        return train(run.task, run.dataset, cfg.train, cfg.run_dir, sampler=sampler, resume=resume, progress=progress)


__all__ = [
    "RUN_RECORD",
    "Run",
    "Teacher",
    "build_cls_loss",
    "build_dataset",
    "build_distiller",
    "build_head",
    "build_run",
    "build_sampler",
    "build_task",
    "build_teacher",
    "class_counts",
    "config_record",
    "describe_sampler",
    "input_size_of",
    "load_teacher_head",
    "load_teacher_model",
    "run_record",
    "run_training",
]
