"""The one builder: a validated `RunConfig` → everything a run needs, and `run_training`.

`facekd train`, ReFO stages and demo experiments are all RunConfigs assembled here, in this order
(the order fixes which random numbers each part draws, so the same seed gives the same weights):

    dataset  = build_dataset(cfg.data)                           facekd.data
    teacher  = build_teacher(cfg, dataset)                       a cache, an online checkpoint or ONNX
                                                                 model (+ head), or one embedded once
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
from facekd.losses.distiller import LOSSES, Distiller
from facekd.losses.metric import CenterLoss
from facekd.models import embedding_dim, get_model
from facekd.models.checkpoint import load_backbone, load_state_dict_checked
from facekd.models.heads import get_head
from facekd.models.partial_fc import PartialFC
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
from facekd.train.config import OBSERVERS as TRAIN_OBSERVERS
from facekd.utils import load_torch, save_json, seed_everything

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


def load_network(
    arch: str | None = None,
    checkpoint: str | Path | None = None,
    onnx: str | Path | None = None,
    embedding_size: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The one way a trained network is loaded for embedding, evaluation or teaching (eval mode, on
    `device`): an ONNX graph (`facekd.onnx.OnnxTeacher`: architecture, width and normalisation read
    from the graph; CUDA execution provider when the device is a GPU and onnxruntime has it), or
    `arch` with the weights of `checkpoint` (`load_backbone`: widths not given are read from the
    weights), or `arch` with random weights when neither is given."""
    if onnx is not None:
        if arch is not None or checkpoint is not None or embedding_size is not None:
            raise ValueError(
                f"{onnx}: an ONNX model brings its own architecture, weights and width; "
                "give no arch / checkpoint / embedding size with it"
            )
        from facekd.onnx.teacher import OnnxTeacher

        return OnnxTeacher(onnx, device=device).eval()
    if arch is None:
        raise ValueError("give an architecture (arch) with a checkpoint, or an ONNX model")
    given = (("embedding_size", embedding_size), ("input_size", input_size))
    sizes: dict[str, Any] = {k: v for k, v in given if v is not None}
    model = load_backbone(checkpoint, arch, **sizes) if checkpoint is not None else get_model(arch, **sizes)
    return model.eval().to(device)


def load_teacher_model(t: TeacherConfig, input_size: int | tuple[int, int], device: str = "cpu") -> nn.Module:
    """The teacher network of `t`: its ONNX graph, or the backbone of `t.checkpoint` (embedding width
    read from the weights unless `t.embedding_size` is given), on `device`."""
    if t.onnx is not None:
        return load_network(onnx=t.onnx, device=device)
    assert t.checkpoint is not None and t.arch is not None  # TeacherConfig guarantees one source
    return load_network(t.arch, t.checkpoint, embedding_size=t.embedding_size, input_size=input_size, device=device)


def load_teacher_head(t: TeacherConfig, task: str, dim: int) -> nn.Module:
    """The teacher's head from `t.head` (a head.pth state_dict): Linear(dim, C) for task
    classification, else margin head `t.head_name`; C is read from its (C, dim) `weight`."""
    assert t.head is not None
    state = load_torch(t.head, "teacher head")
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
    """`cfg.teacher` as a provider: a given cache; an online checkpoint or ONNX model (with its
    head when `teacher.head` is set); or a checkpoint / ONNX model embedded once into
    `run_dir/teacher_cache` from the un-augmented images (under torchrun each rank embeds its
    shard). An ONNX teacher's identity is its file's sha256."""
    t = cfg.teacher
    assert t is not None
    if t.cache is not None:
        cache = EmbeddingCache.open(t.cache)
        return Teacher(CachedTeacher(cache), cache, {"cache": cache.meta})
    device = dist.resolve_device(cfg.train.device)
    input_size = input_size_of(cfg, dataset)
    model = load_teacher_model(t, input_size, str(device))
    if t.online:
        head = None
        if t.head is not None:
            head = load_teacher_head(t, cfg.task, embedding_dim(model, input_size))
        identity = {"model_sha256": model_checksum(model), "head_sha256": model_checksum(head) if head else None}
        if cfg.task == "classification" and head is not None:
            return Teacher(ClassifierTeacher(model, head), None, identity)
        return Teacher(OnlineTeacher(model, head), None, identity)
    cache = embed_dataset(model, dataset.without_augmentation(), cfg.run_dir / "teacher_cache", flip=t.flip)
    return Teacher(CachedTeacher(cache), cache, {"cache": cache.meta})


# --------------------------------------------------------------------------------------------
# task
# --------------------------------------------------------------------------------------------


def class_counts(dataset) -> np.ndarray:
    """Images per class, int64 (C,): what Class-Balanced and LDAM losses weight by."""
    return np.bincount(dataset.labels, minlength=dataset.num_classes)


# Above this many classes a face head is sharded and samples its negatives by default (arcface_torch
# trains MS1MV3's 93k identities with every centre, WebFace42M's 2M with PartialFC at 0.2-0.3).
SHARD_ABOVE = 100_000
AUTO_SAMPLE_RATE = 0.3


def _unshardable(cfg: RunConfig) -> str | None:
    """Why `cfg`'s head cannot be sharded (PartialFC computes a plain CE over margin logits it
    never gathers), or None."""
    h = cfg.head
    assert h is not None
    if cfg.task != "face":
        return f"the sharded head is for task face, not {cfg.task}"
    if h.name not in ("arcface", "cosface"):
        return f"the sharded head needs a margin head (arcface, cosface), not {h.name}"
    if cfg.cls_loss.name != "ce":
        return f"the sharded head computes cross-entropy, not cls_loss {cfg.cls_loss.name}"
    if cfg.distill is not None and LOSSES.lookup(cfg.distill.loss).reads == "logits":
        return f"distill loss {cfg.distill.loss} reads the student's logits, which the sharded head never gathers"
    return None


def head_sharding(cfg: RunConfig, num_classes: int) -> tuple[bool, float]:
    """(sharded, sample_rate) of `cfg.head`. auto: sharded under torchrun or above `SHARD_ABOVE`
    classes when the run allows it; rate 1.0 up to `SHARD_ABOVE` classes, `AUTO_SAMPLE_RATE` above.
    Asking for a sharded head the run cannot use, or sampling without one, is a ValueError."""
    h = cfg.head
    assert h is not None
    why_not = _unshardable(cfg)
    if h.sharded == "auto":
        sharded = why_not is None and (dist.world_size() > 1 or num_classes > SHARD_ABOVE)
    elif h.sharded and why_not is not None:
        raise ValueError(f"head.sharded: {why_not}")
    else:
        sharded = bool(h.sharded)
    if h.sample_rate != "auto" and h.sample_rate < 1.0 and not sharded:
        raise ValueError("head.sample_rate < 1 needs the sharded head (head.sharded: true)")
    rate = (1.0 if num_classes <= SHARD_ABOVE else AUTO_SAMPLE_RATE) if h.sample_rate == "auto" else h.sample_rate
    return sharded, float(rate) if sharded else 1.0


def build_head(cfg: RunConfig, dim: int, num_classes: int) -> nn.Module | None:
    """Linear(dim, C) for task classification, else `cfg.head`: a margin or softmax head, or the
    sharded `PartialFC` (see `head_sharding`); None without one."""
    if cfg.head is None:
        return None
    if cfg.task == "classification":
        return nn.Linear(dim, num_classes)
    h = cfg.head
    sharded, rate = head_sharding(cfg, num_classes)
    if sharded:
        return PartialFC(h.name, dim, num_classes, s=h.s, m=h.m, sample_rate=rate, **h.options)
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
    if m.init is not None:
        load_backbone(m.init, student).train()
    dim = embedding_dim(student, input_size)
    head = build_head(cfg, dim, dataset.num_classes)
    # a sharded head computes its cross-entropy itself (head_sharding allows it only with ce)
    loss = None if getattr(head, "returns_loss", False) else build_cls_loss(cfg, dataset)
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


def build_run(cfg: RunConfig, progress: bool = True) -> Run:
    """Dataset, teacher, sampler (progress bars when `progress`), then (after seeding with
    `train.seed`) the task."""
    dataset = build_dataset(cfg.data)
    teacher = build_teacher(cfg, dataset) if cfg.teacher is not None else None
    cache = teacher.cache if teacher else None
    sampler = build_sampler(cfg.sampler, dataset, cfg.train.seed, cache, progress=progress)
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


TEACHER_FILES = {"cache", "checkpoint", "onnx", "head"}  # recorded by content in the teacher's identity


def config_record(cfg: RunConfig) -> dict:
    """The config values a result depends on: all but `run_dir`, what only observes the run
    (`train.val`) and the teacher's file paths, whose contents the record's teacher identity holds
    (a teacher file moved or renamed is the same teacher). Train's RESUMABLE settings are kept but
    never compared."""
    exclude: dict[str, Any] = {
        "run_dir": True,
        "model": {"init"},
        "teacher": TEACHER_FILES,
        "train": set(TRAIN_OBSERVERS),
    }
    return json.loads(cfg.model_dump_json(by_alias=True, exclude=exclude))


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
            "init": None if cfg.model.init is None else store.file_digest(cfg.model.init),
            "sampler": describe_sampler(sampler),
        }
    )


def _saved_record(run_dir: Path) -> dict | None:
    path = run_dir / RUN_RECORD
    if not path.is_file():
        return None
    record = store.read_record(path, "run record").get("record")
    if not isinstance(record, dict):
        raise store.BadRecord(f"{path}: expected a 'record' object in the run record, got {record!r:.60}")
    return record


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
        run = build_run(cfg, progress=progress)
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
    "head_sharding",
    "input_size_of",
    "load_network",
    "load_teacher_head",
    "load_teacher_model",
    "run_record",
    "run_training",
]
