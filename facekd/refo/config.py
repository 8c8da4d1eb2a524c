"""`RefoConfig`: everything ReFO / ReFO+ needs besides the data.

Networks, the margin head and the classification loss are the blocks of a `facekd.config.RunConfig`
(`ModelConfig`, `HeadConfig`, `ClsLossConfig`), and each trained stage has a
`facekd.train.TrainConfig`, so every stage of the pipeline is an ordinary training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facekd.config import ClsLossConfig, HeadConfig, ModelConfig
from facekd.train import TrainConfig


class RefoConfig(BaseModel):
    """Everything ReFO / ReFO+ needs besides the data.

    variant: "refo" (proxy trained from scratch with L_cls) or "refo_plus" (proxy distilled from
        the original teacher: L_cls + proxy_lambda · L_emb; needs `original_teacher`).
    teacher / student: `{arch, embedding_size}` of the tailored teacher and of the feature-only
        student. proxy: architecture of the proxy s′; default the student's (Algorithm 1). Another
        architecture tailors the teacher to that one, whose feature-only students may then be of
        any architecture (the transfer study, supplementary Table 1).
    head / cls_loss: L_cls of the stages that use labels (proxy, reverse distillation).
    emb_loss: L_emb, a per-sample loss name of `facekd.losses.distiller.Distiller` (default "l2":
        squared Euclidean distance; the paper does not publish its form).
    normalize: L_emb on L2-normalised embeddings (and caches stored normalised). Default True.
    beta1: weight of L_emb in reverse distillation; None → 0.5 if normalize else 0.001 (the
        supplementary's defaults). beta2: weight of the feature-only loss (5).
    original_teacher / original_checkpoint: architecture and backbone.pth of the original teacher;
        needed for refo_plus and teacher_init "original".
    teacher_init: "scratch" (the tailored teacher trained from random weights, Algorithm 1 step 3
        as we read it) or "original" (reverse distillation fine-tunes the original teacher's
        weights; its architecture must be the tailored teacher's).
    proxy_train / teacher_train / student_train: `facekd.train.TrainConfig` of each trained stage
        (device, logging and checkpoint frequency may change when a run is resumed).
    flip: flip-sum embeddings in the embed stages (insightface test-time convention). Default False.
    """

    model_config = ConfigDict(extra="forbid")

    variant: Literal["refo", "refo_plus"] = "refo"
    teacher: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate({"arch": "iresnet_tiny"}))
    student: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate({"arch": "mbf_tiny"}))
    proxy: ModelConfig | None = None
    head: HeadConfig = Field(default_factory=lambda: HeadConfig.model_validate({}))
    cls_loss: ClsLossConfig = Field(default_factory=lambda: ClsLossConfig.model_validate({}))
    emb_loss: str = "l2"
    normalize: bool = True
    beta1: float | None = Field(None, ge=0)
    beta2: float = Field(5.0, gt=0)
    proxy_lambda: float = Field(1.0, ge=0)
    original_teacher: ModelConfig | None = None
    original_checkpoint: Path | None = None
    teacher_init: Literal["scratch", "original"] = "scratch"
    proxy_train: TrainConfig = Field(default_factory=lambda: TrainConfig.model_validate({}))
    teacher_train: TrainConfig = Field(default_factory=lambda: TrainConfig.model_validate({}))
    student_train: TrainConfig = Field(default_factory=lambda: TrainConfig.model_validate({}))
    flip: bool = False
    embed_batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _check(self):
        needs_original = self.variant == "refo_plus" or self.teacher_init == "original"
        if needs_original and (self.original_teacher is None or self.original_checkpoint is None):
            raise ValueError(
                "variant=refo_plus and teacher_init=original need original_teacher (arch) and "
                "original_checkpoint (backbone.pth of the original teacher)"
            )
        if self.teacher_init == "original":
            assert self.original_teacher is not None
            if self.original_teacher.arch != self.teacher.arch:
                raise ValueError(
                    f"teacher_init=original fine-tunes the original teacher: original_teacher.arch "
                    f"{self.original_teacher.arch!r} must be teacher.arch {self.teacher.arch!r}"
                )
        return self

    @property
    def beta1_value(self) -> float:
        """β1 in use: the given value, else 0.5 (normalised) / 0.001 (raw embeddings)."""
        if self.beta1 is not None:
            return self.beta1
        return 0.5 if self.normalize else 0.001

    @property
    def proxy_model(self) -> ModelConfig:
        """The proxy's architecture: `proxy`, else the student's."""
        return self.proxy if self.proxy is not None else self.student


__all__ = ["RefoConfig"]
