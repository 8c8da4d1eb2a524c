"""ReFO / ReFO+: reverse distillation and feature-only students (Algorithm 1 of "Rethinking
Feature-based Knowledge Distillation for Face Recognition"; only its supplementary is public).

The five steps, each a resumable *stage* with its artifacts in `run_dir/<stage>/`:

1. ``proxy``          train a proxy s′ with the student's architecture on D1 with L_cls (ReFO).
                      ReFO+ (our reading, the paper's text for it is not public): s′ is *distilled
                      from the original teacher*, L_cls + λ_p · L_emb(f_s′, f_t) (`proxy_lambda`),
                      the original teacher's D1 embeddings coming from stage ``original_embed``.
2. ``proxy_embed``    embed D1 with s′ (EmbeddingCache).
3. ``reverse``        reverse distillation: train the *teacher* with L_cls + β1 · L_emb(f_t, f_s′)
                      (supplementary Eq. 4). The teacher is the model being trained, the target is
                      the proxy's cached embedding; when their sizes differ a linear projection
                      (inside the Distiller, training only) maps the teacher's embedding to the
                      proxy's size. β1 defaults to 0.5 with normalised embeddings, 0.001 without.
4. ``teacher_embed``  embed the distillation data D2 with the tailored teacher (labels unused).
5. ``student``        feature-only distillation: the student is trained with β2 · L_emb(f_s, f_t)
                      only (Eq. 5, β2 = 5): no labels, no margin head, no class centres.

A stage that finished has `run_dir/<stage>/stage.json` holding a hash of everything it depends on
(its settings, the dataset fingerprint and the upstream stages' hashes); a re-run skips it, and
refuses to mix it with a changed config. A stage that was killed mid-way resumes from its own
checkpoint (`facekd.train.train` / `facekd.embed.embed_dataset` are resumable), so a killed
`facekd refo` continues at the stage it was in.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from facekd import dist
from facekd.embed import EmbeddingCache, embed_dataset
from facekd.losses.classification import get_cls_loss
from facekd.losses.distiller import Distiller
from facekd.models import embedding_dim, get_model
from facekd.models.checkpoint import load_backbone
from facekd.models.heads import get_head
from facekd.tasks import CachedTeacher, FaceTask
from facekd.train import TrainConfig, resolve_device, train
from facekd.utils import save_json

_RESUMABLE = {"checkpoint_every", "log_every", "num_workers", "device"}  # may change between resumes
STAGES = ("original_embed", "proxy", "proxy_embed", "reverse", "teacher_embed", "student")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class NetSpec(BaseModel):
    """An architecture of `facekd.models.get_model` and its embedding size."""

    model_config = ConfigDict(extra="forbid")
    arch: str
    embedding_size: int = Field(512, ge=1)


class HeadSpec(BaseModel):
    """Margin head of the stages that use labels (proxy, reverse): `facekd.models.heads.get_head`."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["arcface", "cosface", "softmax"] = "arcface"
    s: float = 64.0
    m: float | None = None  # None: the head's own default margin


class RefoConfig(BaseModel):
    """Everything ReFO / ReFO+ needs besides the data.

    variant: "refo" (proxy trained from scratch with L_cls) or "refo_plus" (proxy distilled from
        the original teacher: L_cls + proxy_lambda · L_emb; needs `original_teacher`).
    emb_loss: L_emb, a per-sample loss name of `facekd.losses.distiller.Distiller` (default "l2":
        squared Euclidean distance; the paper does not publish its form).
    normalize: L_emb on L2-normalised embeddings (and caches stored normalised). Default True.
    beta1: weight of L_emb in reverse distillation; None → 0.5 if normalize else 0.001 (the
        supplementary's defaults). beta2: weight of the feature-only loss (5).
    teacher_init: "scratch" (the tailored teacher is trained from random weights, Algorithm 1
        step 3 as we read it) or "original" (fine-tune the original teacher's weights).
    original_teacher: checkpoint (backbone.pth) and architecture of the original teacher; needed
        for refo_plus and teacher_init="original".
    proxy_train / teacher_train / student_train: `facekd.train.TrainConfig` of each trained stage
        (device, logging and checkpoint frequency may change when a run is resumed).
    flip: flip-sum embeddings in the embed stages (insightface test-time convention). Default False.
    """

    model_config = ConfigDict(extra="forbid")

    variant: Literal["refo", "refo_plus"] = "refo"
    teacher: NetSpec = NetSpec(arch="iresnet_tiny")
    student: NetSpec = NetSpec(arch="mbf_tiny")
    head: HeadSpec = HeadSpec()
    cls_loss: Literal["ce", "focal"] = "ce"
    emb_loss: str = "l2"
    normalize: bool = True
    beta1: float | None = Field(None, ge=0)
    beta2: float = Field(5.0, gt=0)
    proxy_lambda: float = Field(1.0, ge=0)
    teacher_init: Literal["scratch", "original"] = "scratch"
    original_teacher: NetSpec | None = None
    original_checkpoint: str | None = None
    proxy_train: TrainConfig = Field(default_factory=TrainConfig)
    teacher_train: TrainConfig = Field(default_factory=TrainConfig)
    student_train: TrainConfig = Field(default_factory=TrainConfig)
    flip: bool = False
    embed_batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _check(self):
        needs_original = self.variant == "refo_plus" or self.teacher_init == "original"
        if needs_original and (self.original_teacher is None or self.original_checkpoint is None):
            raise ValueError(
                "variant=refo_plus and teacher_init=original need original_teacher (arch) "
                "and original_checkpoint (backbone.pth of the original teacher)"
            )
        return self

    @property
    def beta1_value(self) -> float:
        """β1 in use: the given value, else 0.5 (normalised) / 0.001 (raw embeddings)."""
        if self.beta1 is not None:
            return self.beta1
        return 0.5 if self.normalize else 0.001

    def train_config(self, stage: Literal["proxy", "teacher", "student"]) -> TrainConfig:
        """The TrainConfig of a trained stage."""
        return getattr(self, f"{stage}_train")

    def train_key(self, stage: Literal["proxy", "teacher", "student"]) -> dict:
        """The TrainConfig fields that define a stage's result (not device, logging, checkpointing)."""
        return self.train_config(stage).model_dump(mode="json", exclude=_RESUMABLE)


# --------------------------------------------------------------------------------------------
# Building blocks (also used by the demo)
# --------------------------------------------------------------------------------------------


def build_backbone(spec: NetSpec, input_size: int, seed: int | None = None) -> nn.Module:
    """A fresh backbone for `spec` at `input_size` pixels (seeded first when `seed` is given)."""
    if seed is not None:
        torch.manual_seed(seed)
    return get_model(spec.arch, embedding_size=spec.embedding_size, input_size=input_size)


def load_trained(spec: NetSpec, input_size: int, path: str | Path) -> nn.Module:
    """Backbone `spec` with the weights of `path` (a backbone.pth), in eval mode."""
    return load_backbone(path, build_backbone(spec, input_size))


def make_distiller(lam: float, student_dim: int, target_dim: int, loss: str = "l2", normalize: bool = True):
    """λ · L_emb(f_trained, f_target) as a `Distiller`; a projection when the sizes differ."""
    return Distiller(
        loss=loss, weighting="uniform", lam=lam, student_dim=student_dim, teacher_dim=target_dim, normalize=normalize
    )


def train_with_labels(
    model: nn.Module,
    dataset,
    train_cfg,
    run_dir: str | Path,
    head: HeadSpec,
    cls_loss: str = "ce",
    target_cache=None,
    lam: float = 0.0,
    emb_loss: str = "l2",
    normalize: bool = True,
    progress: bool = True,
) -> nn.Module:
    """L_cls (+ lam · L_emb(f_model, cached target)) training; returns the trained backbone.

    Used for the ReFO proxy (no target), the ReFO+ proxy (target: original teacher), and reverse
    distillation (model: the teacher, target: the proxy). The margin head has `dataset.num_classes`
    class centres.
    """
    dim = embedding_dim(model, dataset.image_size)
    head_module = get_head(head.name, dim, dataset.num_classes, s=head.s, m=head.m)
    distiller = teacher = None
    if target_cache is not None and lam > 0:
        teacher = CachedTeacher(target_cache)
        distiller = make_distiller(lam, dim, teacher.dim, emb_loss, normalize)
    task = FaceTask(model, head=head_module, cls_loss=get_cls_loss(cls_loss), distiller=distiller, teacher=teacher)
    return train(task, dataset, train_cfg, run_dir, progress=progress).student.eval()


def train_feature_only(
    model: nn.Module,
    dataset,
    teacher_cache,
    train_cfg,
    run_dir: str | Path,
    beta2: float = 5.0,
    emb_loss: str = "l2",
    normalize: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Feature-only student: β2 · L_emb(f_s, f_t) with no labels, head or class centres (Eq. 5).

    `teacher_cache` holds the teacher's embeddings of `dataset` (row i ↔ item i). Returns the
    trained backbone. A projection (student → teacher size) is trained with it if sizes differ; it
    is training-only, the deployed student uses its own embedding.
    """
    teacher = CachedTeacher(teacher_cache)
    if len(teacher_cache.embeddings) != len(dataset):
        raise ValueError(
            f"teacher cache {teacher_cache.directory} has {len(teacher_cache.embeddings)} rows, "
            f"the distillation data {len(dataset)}"
        )
    distiller = make_distiller(beta2, embedding_dim(model, dataset.image_size), teacher.dim, emb_loss, normalize)
    task = FaceTask(model, head=None, distiller=distiller, teacher=teacher)
    return train(task, dataset, train_cfg, run_dir, progress=progress).student.eval()


# --------------------------------------------------------------------------------------------
# Memory that a feature-only student saves
# --------------------------------------------------------------------------------------------


def class_centre_memory(
    num_classes: int = 93_431, embedding_size: int = 512, batch_size: int = 128, bytes_per_value: int = 4
) -> dict:
    """Bytes that the margin head (class centres) costs during training, and a feature-only student saves.

    Per optimizer: weights W (C × d) + their gradient + optimizer state: SGD with momentum keeps one
    buffer (C × d), Adam two (exp_avg, exp_avg_sq), plain SGD none. `logits` adds the (B × C)
    logits and their gradient for one batch of `batch_size` per GPU. Defaults: MS1MV3
    (93,431 identities), 512-d, fp32. Returns a dict of byte counts.
    """
    centres = num_classes * embedding_size * bytes_per_value
    logits = 2 * batch_size * num_classes * bytes_per_value
    return {
        "num_classes": num_classes,
        "embedding_size": embedding_size,
        "parameters": num_classes * embedding_size,
        "weights": centres,
        "sgd": 2 * centres,  # weights + gradient
        "sgd_momentum": 3 * centres,  # + momentum buffer
        "adam": 4 * centres,  # + exp_avg + exp_avg_sq
        "logits_per_batch": logits,
        "batch_size": batch_size,
    }


def format_bytes(n: int) -> str:
    """'182.5 MiB (191.3 MB)' style."""
    return f"{n / 2**20:.1f} MiB ({n / 1e6:.1f} MB)"


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class RefoResult:
    """Where each stage left its artifacts, and the loaded final models."""

    run_dir: Path
    proxy: nn.Module
    tailored_teacher: nn.Module
    student: nn.Module
    proxy_cache: object
    teacher_cache: object
    stages: dict  # stage → its stage.json record


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"original teacher checkpoint {p} does not exist")
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class _Stages:
    """Stage bookkeeping: skip finished stages, refuse a changed config, log progress."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]):
        self.run_dir = run_dir
        self.log = log
        self.records: dict[str, dict] = {}

    def run(self, name: str, key: dict, fn: Callable[[Path], dict]) -> dict:
        stage_dir = self.run_dir / name
        marker = stage_dir / "stage.json"
        h = _hash(key)
        number = STAGES.index(name)
        if marker.exists():
            record = json.loads(marker.read_text())
            if record.get("hash") != h:
                raise ValueError(
                    f"{marker}: stage {name!r} was finished with a different configuration or data "
                    f"(hash {record.get('hash')} ≠ {h}); use a new run directory or delete {stage_dir}"
                )
            self.log(f"[refo] stage {number} {name}: done, reused")
        else:
            verb = "resuming" if stage_dir.exists() else "starting"
            self.log(f"[refo] stage {number} {name}: {verb}")
            save_json(self.run_dir / "progress.json", {"stage": name, "hash": h})
            t0 = time.perf_counter()
            artifacts = fn(stage_dir)
            record = {
                "stage": name,
                "hash": h,
                "key": key,
                "seconds": round(time.perf_counter() - t0, 2),
                "artifacts": artifacts,
            }
            save_json(marker, record)
        self.records[name] = record
        return record


def run_refo(
    cfg: RefoConfig,
    run_dir: str | Path,
    train_set,
    distill_set=None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RefoResult:
    """Run (or resume) Algorithm 1 in `run_dir`; return the proxy, tailored teacher and student.

    train_set: D1, labelled (proxy and reverse distillation). distill_set: D2 for the
    feature-only student (labels never read); defaults to D1. Both follow `facekd.data.base`.
    """
    dist.init_from_env()  # before any stage: the embed stages shard across torchrun ranks too
    device = cfg.train_config("teacher").device

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    distill_set = train_set if distill_set is None else distill_set
    if distill_set.image_size != train_set.image_size:
        raise ValueError(
            f"D1 images are {train_set.image_size} px, D2 images {distill_set.image_size} px: "
            "the student and teacher need one input size"
        )
    size = train_set.image_size
    stages = _Stages(run_dir, log)
    save_json(run_dir / "refo_config.json", cfg.model_dump(mode="json"))
    common = {"d1": train_set.fingerprint(), "normalize": cfg.normalize, "flip": cfg.flip, "emb_loss": cfg.emb_loss}

    def embed(model: nn.Module, dataset, out: Path) -> dict:
        dataset = dataset.without_augmentation()  # targets are looked up by row: embed without augmentation
        embed_dataset(
            model.to(resolve_device(device)),
            dataset,
            out,
            flip=cfg.flip,
            batch_size=cfg.embed_batch_size,
            normalize=cfg.normalize,
            progress=progress,
        )
        return {"cache": str(out)}

    # 0. (ReFO+ / fine-tuning) the original teacher's embeddings of D1.
    original_key = None
    if cfg.original_teacher is not None and cfg.original_checkpoint is not None:
        original_key = {
            "arch": cfg.original_teacher.model_dump(),
            "ckpt": _file_digest(cfg.original_checkpoint),
            **common,
        }
    original_cache = None
    if cfg.variant == "refo_plus":
        rec = stages.run(
            "original_embed",
            original_key,
            lambda d: embed(load_trained(cfg.original_teacher, size, cfg.original_checkpoint), train_set, d / "cache"),
        )
        original_cache = EmbeddingCache.open(rec["artifacts"]["cache"])

    # 1. proxy s′ with the student's architecture.
    proxy_key = {
        "variant": cfg.variant,
        "student": cfg.student.model_dump(),
        "head": cfg.head.model_dump(),
        "cls_loss": cfg.cls_loss,
        "train": cfg.train_key("proxy"),
        **common,
    }
    if cfg.variant == "refo_plus":
        proxy_key |= {"proxy_lambda": cfg.proxy_lambda, "original": original_key}

    def do_proxy(d: Path) -> dict:
        tc = cfg.train_config("proxy")
        model = build_backbone(cfg.student, size, seed=tc.seed)
        train_with_labels(
            model,
            train_set,
            tc,
            d,
            cfg.head,
            cfg.cls_loss,
            target_cache=original_cache,
            lam=cfg.proxy_lambda if original_cache is not None else 0.0,
            emb_loss=cfg.emb_loss,
            normalize=cfg.normalize,
            progress=progress,
        )
        return {"backbone": str(d / "backbone.pth")}

    rec = stages.run("proxy", proxy_key, do_proxy)
    proxy = load_trained(cfg.student, size, rec["artifacts"]["backbone"])

    # 2. D1 embedded by the proxy.
    proxy_embed_key = {"proxy": stages.records["proxy"]["hash"], **common}
    rec = stages.run("proxy_embed", proxy_embed_key, lambda d: embed(proxy, train_set, d / "cache"))
    proxy_cache = EmbeddingCache.open(rec["artifacts"]["cache"])

    # 3. reverse distillation: the teacher learns L_cls + β1 · L_emb(f_t, f_s′).
    reverse_key = {
        "teacher": cfg.teacher.model_dump(),
        "head": cfg.head.model_dump(),
        "cls_loss": cfg.cls_loss,
        "train": cfg.train_key("teacher"),
        "beta1": cfg.beta1_value,
        "init": cfg.teacher_init,
        "original": original_key if cfg.teacher_init == "original" else None,
        "proxy_embed": stages.records["proxy_embed"]["hash"],
        **common,
    }

    def do_reverse(d: Path) -> dict:
        tc = cfg.train_config("teacher")
        if cfg.teacher_init == "original":
            if cfg.original_teacher.model_dump() != cfg.teacher.model_dump():
                raise ValueError(
                    f"teacher_init=original: original_teacher {cfg.original_teacher} differs from teacher {cfg.teacher}"
                )
            model = load_trained(cfg.teacher, size, cfg.original_checkpoint).train()
        else:
            model = build_backbone(cfg.teacher, size, seed=tc.seed)
        train_with_labels(
            model,
            train_set,
            tc,
            d,
            cfg.head,
            cfg.cls_loss,
            target_cache=proxy_cache,
            lam=cfg.beta1_value,
            emb_loss=cfg.emb_loss,
            normalize=cfg.normalize,
            progress=progress,
        )
        return {"backbone": str(d / "backbone.pth")}

    rec = stages.run("reverse", reverse_key, do_reverse)
    tailored = load_trained(cfg.teacher, size, rec["artifacts"]["backbone"])

    # 4. D2 embedded by the tailored teacher.
    teacher_embed_key = {"reverse": stages.records["reverse"]["hash"], "d2": distill_set.fingerprint(), **common}
    rec = stages.run("teacher_embed", teacher_embed_key, lambda d: embed(tailored, distill_set, d / "cache"))
    teacher_cache = EmbeddingCache.open(rec["artifacts"]["cache"])

    # 5. feature-only student.
    student_key = {
        "student": cfg.student.model_dump(),
        "train": cfg.train_key("student"),
        "beta2": cfg.beta2,
        "teacher_embed": stages.records["teacher_embed"]["hash"],
        **common,
    }

    def do_student(d: Path) -> dict:
        tc = cfg.train_config("student")
        model = build_backbone(cfg.student, size, seed=tc.seed)
        train_feature_only(
            model, distill_set, teacher_cache, tc, d, cfg.beta2, cfg.emb_loss, cfg.normalize, progress=progress
        )
        return {"backbone": str(d / "backbone.pth")}

    rec = stages.run("student", student_key, do_student)
    student = load_trained(cfg.student, size, rec["artifacts"]["backbone"])
    save_json(run_dir / "progress.json", {"stage": "finished"})
    log(f"[refo] finished: {run_dir}")
    return RefoResult(run_dir, proxy, tailored, student, proxy_cache, teacher_cache, dict(stages.records))
