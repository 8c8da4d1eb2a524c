"""The `train:` block of a run config: `TrainConfig` (optimisation, precision, loader, logging)
and `ValConfig` (insightface `.bin` validation while training), and the learning-rate schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

# Settings added after runs were first recorded, with their defaults: a record holds them only
# when they differ from these, so that runs recorded before they existed still resume and match.
ADDED_DEFAULTS: dict[str, Any] = {
    "accumulate": 1,
    "compile": False,
    "val": None,
    "num_workers": "auto",
    "find_unused_parameters": False,
}

# Settings that only observe a run (what is evaluated and logged, never the weights): they may
# change between a killed run and its resume and are left out of every comparison.
OBSERVERS = frozenset({"val"})


class ValConfig(BaseModel):
    """insightface `.bin` verification sets evaluated every `every` optimizer steps (and at the end).

    `best_by`: the set names (file stems) whose mean Accuracy-Flip decides `best.pt`; default all.
    """

    model_config = ConfigDict(extra="forbid")

    bin: list[Path] = Field(min_length=1)
    every: int = Field(default=2000, ge=1)
    best_by: list[str] | None = None
    batch_size: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _check(self):
        for p in self.bin:
            if not Path(p).is_file():
                raise ValueError(f"validation set {p} does not exist")
        names = [Path(p).stem for p in self.bin]
        if len(set(names)) != len(names):
            raise ValueError(f"validation sets need distinct file names, got {names}")
        unknown = sorted(set(self.best_by or []) - set(names))
        if unknown:
            raise ValueError(f"best_by names {unknown} are not among the validation sets {names}")
        return self

    @property
    def names(self) -> list[str]:
        return [Path(p).stem for p in self.bin]


class TrainConfig(BaseModel):
    """Optimisation settings (arcface_torch defaults where it has one).

    `batch_size` is per process and per micro-batch (as in arcface_torch); an optimizer step
    sees batch_size × accumulate × world size samples. `warmup_epochs` and `milestones` are in
    epochs (fractions allowed) and converted to optimizer steps.
    `amp`: "bf16" (autocast, no scaler), "fp16" (CUDA: autocast + GradScaler), "off"; `true` is
    fp16 on CUDA and bf16 on CPU, `false` is off. Heads and losses always run in float32.
    `channels_last`: the networks and 4-D images in channels_last memory format, on every device:
    the layout cuDNN's fast kernels want, and on this project's CPU (oneDNN) faster training
    steps (1.43× for mbf_tiny, 1.29× for iresnet_tiny: benchmarks/train_throughput.py --only layout).
    `num_workers`: "auto" is min(8, this process' share of the cores) on CUDA and 0 on CPU
    (where exact resume needs it).
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_epochs: float = Field(default=0.0, ge=0)
    schedule: Literal["poly", "step"] = "poly"
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    clip_grad: float | None = Field(default=5.0, gt=0)
    clip_scope: Literal["backbone", "all"] = "backbone"
    amp: bool | Literal["bf16", "fp16", "off"] = False
    accumulate: int = Field(default=1, ge=1)
    compile: bool = False
    channels_last: bool = True
    seed: int = 0
    checkpoint_every: int = Field(default=0, ge=0)
    log_every: int = Field(default=20, ge=1)
    num_workers: int | Literal["auto"] = Field(default="auto")
    drop_last: bool = True
    device: str = "auto"
    find_unused_parameters: bool = False
    val: ValConfig | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.schedule == "step" and sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if isinstance(self.num_workers, int) and self.num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0 or 'auto', got {self.num_workers}")
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k not in ADDED_DEFAULTS or v != ADDED_DEFAULTS[k]}

    def record(self) -> dict[str, Any]:
        """The settings a run's weights depend on, as plain data (no `OBSERVERS`)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in OBSERVERS}


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate used for optimizer step `step` (0-based).

    Warm-up: linear from 0, `lr · step / warmup_steps` (arcface_torch's PolynomialLRWarmup).
    "poly": `lr · (1 − (step − warmup) / (total − warmup))`, power 1, reaching 0 at the end.
    "step": `lr · gamma^k`, k = number of milestones (in epochs) already reached.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * step / warmup
    if cfg.schedule == "poly":
        return cfg.lr * max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))
    passed = sum(step >= int(m * steps_per_epoch) for m in cfg.milestones)
    return cfg.lr * cfg.gamma**passed


__all__ = ["ADDED_DEFAULTS", "OBSERVERS", "TrainConfig", "ValConfig", "lr_at"]
