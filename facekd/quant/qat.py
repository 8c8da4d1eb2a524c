"""Quantization-aware distillation: fine-tune a trained student under fake quantization while it
distils from the fp32 teacher, then export it to INT8 and measure what quantization costs.

Config (YAML, `facekd qat config.yaml [key=value ...]`)::

    student:  {checkpoint: runs/student/backbone.pth, arch: mbf_tiny}   # the trained fp32 student
    teacher:  {checkpoint: runs/teacher/backbone.pth, arch: iresnet_tiny, online: true}  # or {cache: ...}
    data:     {kind: synthfaces, preset: default}                        # training images (a data block)
    distill:  {loss: l2, weighting: uniform, lambda: 1.0}                # any registered loss / weighting
    train:    {epochs: 2, lr: 0.01}                                      # facekd.train.TrainConfig
    quantize: {calibrator: minmax, calibration_images: 512}
    eval:     {synthfaces: true, bins: [], ijb: null}
    run_dir:  runs/qat

The student gets fake quantization (`facekd.quant.fake_quant.prepare_qat`: where the deployed graph
quantizes, with its number formats) and is trained by `facekd.train.train` as a feature-only
`FaceTask` (no head: the teacher's embeddings, through the `Distiller`, are the only target), so
checkpoints, resume and DDP are the loop's. `train` defaults to a short fine-tune (2 epochs at
lr 0.01, a tenth of a student's usual rate, no warm-up); keys given in the config replace them.

After training (`run_qat`) the run directory holds `student_qat.pth` (the fine-tuned float weights
with the backbone's own keys) and `deploy/`: `fp32.onnx` (the student before QAT), `ptq_int8.onnx`
(its post-training quantization), `qat_fp32.onnx`, `qat_int8.onnx` (the fine-tuned student, activation ranges as
`quantize.qat_ranges` says: calibrated like PTQ by default, or learned by its quantizers,
`fake_quant.learned_ranges`), `qat_int8_<other>_ranges.onnx` (the same weights with the other
ranges), `report.json` (TAR, size, latency, checks of all five) and `card.md`. Every INT8 graph
uses the same calibrator on the same images for the tensors it calibrates.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from facekd.config import DataConfig, DistillConfig, TeacherConfig
from facekd.train import TrainConfig

__all__ = [
    "QAT_TRAIN_DEFAULTS",
    "EvalConfig",
    "QATConfig",
    "QuantizeConfig",
    "StudentConfig",
    "build_qat_task",
    "load_qat_config",
    "run_qat",
]

QAT_TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 2, "lr": 0.01, "warmup_epochs": 0.0, "batch_size": 64}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StudentConfig(_Strict):
    checkpoint: Path
    arch: str


class QuantizeConfig(_Strict):
    """How the INT8 graphs are made (`facekd.quant.ptq.quantize_onnx`). `qat_ranges`: the
    activation ranges of the delivered QAT graph, "calibrated" by `calibrator` on the calibration
    images (as PTQ; chosen on validation pairs, see docs/quantization.md) or "learned" by the
    fake quantizers during QAT; the other variant is written too, for comparison."""

    qat_ranges: Literal["calibrated", "learned"] = "calibrated"
    calibrator: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_images: int = Field(512, ge=1)
    per_channel: bool = True
    percentile: float = Field(99.999, gt=0, le=100)
    entropy_bins: int = Field(512, ge=128)
    seed: int = 0


class EvalConfig(_Strict):
    """Where TAR is measured: `synthfaces: true` uses the test pairs of the `data` block (which
    must be SynthFaces), a mapping names another SynthFaces block; `bins`: insightface .bin sets;
    `ijb`: an IJB release folder."""

    synthfaces: bool | dict[str, Any] = True
    bins: list[Path] = Field(default_factory=list)
    ijb: Path | None = None
    ijb_target: Literal["IJBC", "IJBB"] = "IJBC"
    flip: bool = True
    latency_repeats: int = Field(50, ge=1)


class QATConfig(_Strict):
    """See the module docstring. `freeze_bn`: BatchNorm layers normalise with (and keep) the
    trained student's running statistics during the fine-tune, as the deployed graph does."""

    student: StudentConfig
    teacher: TeacherConfig
    data: DataConfig
    freeze_bn: bool = True
    distill: DistillConfig = Field(default_factory=lambda: DistillConfig.model_validate({}))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(**QAT_TRAIN_DEFAULTS))
    quantize: QuantizeConfig = Field(default_factory=lambda: QuantizeConfig.model_validate({}))
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig.model_validate({}))
    run_dir: Path = Path("runs/qat")

    @field_validator("train", mode="before")
    @classmethod
    def _fine_tune_defaults(cls, v):
        return {**QAT_TRAIN_DEFAULTS, **v} if isinstance(v, dict) else v


def load_qat_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> QATConfig:
    """Read a QAT config YAML, apply `key=value` overrides, validate; one-line ConfigError otherwise."""
    from pydantic import ValidationError

    from facekd.config import ConfigError, apply_overrides, format_validation_error, read_yaml_mapping

    raw = apply_overrides(read_yaml_mapping(Path(path)), overrides)
    try:
        return QATConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None


def _teacher(cfg: QATConfig, dataset, input_size: tuple[int, int]):
    """(teacher provider for FaceTask, teacher model or None)."""
    from facekd.embed import EmbeddingCache, embed_dataset
    from facekd.evaluate.model_eval import model_image_size
    from facekd.models.checkpoint import load_backbone
    from facekd.quant.calibration import without_augmentation
    from facekd.tasks import CachedTeacher, OnlineTeacher

    t = cfg.teacher
    if t.cache is not None:
        return CachedTeacher(EmbeddingCache.open(t.cache)), None
    assert t.checkpoint is not None and t.arch is not None  # TeacherConfig's validator
    if t.embedding_size:
        model = load_backbone(t.checkpoint, t.arch, embedding_size=t.embedding_size)
    else:
        model = load_backbone(t.checkpoint, t.arch)
    if model_image_size(model) != input_size[0]:
        raise ValueError(f"teacher {t.checkpoint}: input side {model_image_size(model)}, the student's is {input_size}")
    if t.online:
        return OnlineTeacher(model), model
    cache = embed_dataset(model, without_augmentation(dataset), cfg.run_dir / "teacher_cache", flip=t.flip)
    return CachedTeacher(cache), model


def build_qat_task(cfg: QATConfig, dataset) -> tuple[nn.Module, nn.Module]:
    """(FaceTask with the fake-quantized student, the float student before QAT)."""
    from facekd.evaluate.model_eval import model_image_size
    from facekd.losses.distiller import Distiller
    from facekd.models import embedding_dim
    from facekd.models.checkpoint import load_backbone
    from facekd.quant.fake_quant import freeze_bn_statistics, prepare_qat
    from facekd.tasks import CachedTeacher, FaceTask

    reference = load_backbone(cfg.student.checkpoint, cfg.student.arch)
    side = model_image_size(reference)
    size = (side, side)
    if dataset.image_size != side:
        raise ValueError(f"data: images of side {dataset.image_size}, student {cfg.student.checkpoint} takes {size}")
    provider, teacher_model = _teacher(cfg, dataset, size)
    student = load_backbone(cfg.student.checkpoint, cfg.student.arch)
    t_dim = provider.dim if isinstance(provider, CachedTeacher) else embedding_dim(teacher_model, size)
    distiller = Distiller.from_config(
        {**cfg.distill.model_dump(by_alias=True)},
        student_dim=embedding_dim(student, size),
        teacher_dim=t_dim,
        student=student,
        teacher=teacher_model,
        input_size=size,
    )
    if distiller.needs_logits:
        raise ValueError(
            f"distill.loss {cfg.distill.loss!r} reads class logits; quantization-aware distillation trains "
            "the student alone (no margin head): use an embedding or feature-map loss"
        )
    prepare_qat(student.train(), size)  # after every probe of the float student
    if cfg.freeze_bn:
        freeze_bn_statistics(student)
    return FaceTask(student, head=None, distiller=distiller, teacher=provider), reference


def _float_student(task: nn.Module, reference: nn.Module) -> nn.Module:
    """The fine-tuned student as a plain backbone (the reference's class, the trained weights)."""
    import copy

    from facekd.quant.fake_quant import float_state_dict

    model = copy.deepcopy(reference)
    model.load_state_dict(float_state_dict(task.get_submodule("student").state_dict()), strict=True)
    return model.eval()


def _int8_graphs(cfg: QATConfig, dataset, reference: nn.Module, task: nn.Module) -> tuple[dict[str, Path], dict]:
    """Export the student before and after QAT and quantize both (same calibrator, same images);
    the QAT graph twice, with calibrated ranges and with the ranges its activation quantizers
    learned; "int8 QAT" (`qat_int8.onnx`) is the one `quantize.qat_ranges` names. Returns
    ({model name: ONNX path}, how many quantizers matched a graph tensor)."""
    from facekd.onnx import export_onnx
    from facekd.quant.calibration import DatasetCalibrationReader
    from facekd.quant.fake_quant import learned_ranges
    from facekd.quant.ptq import quantize_onnx

    out, q = cfg.run_dir / "deploy", cfg.quantize
    reader = DatasetCalibrationReader(dataset, q.calibration_images, seed=q.seed)
    settings = (q.calibrator, q.per_channel, q.percentile, True, q.entropy_bins)
    paths = {"fp32": export_onnx(reference, out / "fp32.onnx")}
    paths["int8 PTQ"] = quantize_onnx(paths["fp32"], out / "ptq_int8.onnx", reader, *settings)
    qat_fp32 = paths["fp32 after QAT"] = export_onnx(_float_student(task, reference), out / "qat_fp32.onnx")
    qat_model = task.get_submodule("student")
    images = torch.from_numpy(reader.batch(0)[:8])
    found: dict[str, int] = {}

    def ranges(pre: Path) -> dict:
        overrides, found["matched"] = learned_ranges(qat_model, pre, images)
        return overrides

    other = "learned" if q.qat_ranges == "calibrated" else "calibrated"
    files = {q.qat_ranges: out / "qat_int8.onnx", other: out / f"qat_int8_{other}_ranges.onnx"}
    graphs = {
        "calibrated": quantize_onnx(qat_fp32, files["calibrated"], reader, *settings),
        "learned": quantize_onnx(qat_fp32, files["learned"], reader, *settings, ranges),
    }
    paths["int8 QAT"], paths[f"int8 QAT, {other} ranges"] = graphs[q.qat_ranges], graphs[other]
    n_quantizers = sum(1 for n, _ in qat_model.named_modules() if n.endswith("fake_quant") and "weight" not in n)
    return paths, {"matched": found["matched"], "quantizers": n_quantizers}


def _deploy(cfg: QATConfig, dataset, reference: nn.Module, task: nn.Module, command: str) -> dict:
    """Export, quantize, compare and write the card in run_dir/deploy; returns the report."""
    from facekd.evaluate.model_eval import model_image_size
    from facekd.quant.card import CardInfo, write_card
    from facekd.quant.measure import EvalSets, compare
    from facekd.utils import save_json

    paths, ranges = _int8_graphs(cfg, dataset, reference, task)
    e = cfg.eval
    synth = e.synthfaces if isinstance(e.synthfaces, dict) else None
    if e.synthfaces is True:
        synth = cfg.data.model_dump(mode="json") if cfg.data.kind == "synthfaces" else None
    sets = EvalSets(synth, tuple(e.bins), e.ijb, e.ijb_target, e.flip)
    side = model_image_size(reference)
    int8 = tuple(n for n in paths if n.startswith("int8"))
    report = compare(paths, "fp32", sets, (side, side), quantized=int8, repeats=e.latency_repeats)
    report["quantize"] = {**cfg.quantize.model_dump(mode="json"), "qat_learned_ranges": ranges}
    report["training"] = {
        "teacher": cfg.teacher.model_dump(mode="json"),
        "data": cfg.data.model_dump(mode="json"),
        "distill": cfg.distill.model_dump(mode="json", by_alias=True),
        "train": cfg.train.model_dump(mode="json"),
        "student": cfg.student.model_dump(mode="json"),
    }
    save_json(cfg.run_dir / "deploy" / "report.json", report)
    student = _float_student(task, reference)
    write_card(cfg.run_dir / "deploy" / "card.md", CardInfo(student, cfg.student.arch, report, "int8 QAT", command))
    return report


def run_qat(cfg: QATConfig, resume: bool = True, progress: bool = True, command: str | None = None) -> dict:
    """Build, train (`facekd.train.train`), export and measure a quantization-aware distillation
    run; returns the comparison report (also `run_dir/deploy/report.json`). A finished run is
    reused by the loop; `resume` continues an interrupted one from its last checkpoint."""
    import yaml

    from facekd.config import build_dataset
    from facekd.quant.calibration import without_augmentation
    from facekd.train import train
    from facekd.utils import atomic_path, seed_everything

    dataset = build_dataset(cfg.data)
    seed_everything(cfg.train.seed)
    task, reference = build_qat_task(cfg, dataset)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cfg.run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
    task = train(task, dataset, cfg.train, cfg.run_dir, resume=resume, progress=progress).cpu()
    with atomic_path(cfg.run_dir / "student_qat.pth") as tmp:
        torch.save(_float_student(task, reference).state_dict(), tmp)
    command = command or f"run_qat({cfg.model_dump_json(by_alias=True)})"
    return _deploy(cfg, without_augmentation(dataset), reference, task, command)
