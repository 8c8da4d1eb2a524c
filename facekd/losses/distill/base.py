"""What every distillation loss shares: `Features`, the `DistillLoss` base, the registry, and the
context a Distiller builds a loss with.

A registered loss declares what it reads (``reads``: "embedding", "maps" or "logits"; plus
``needs_labels``), whether PAD's variance weighting applies (``pad_compatible``), whether the
student embedding is projected to the teacher's width first (``projects``), and its options (the
pydantic schema ``Options``). It owns its parameters (FitNet's regressors, VID's regressor and
variance, class centres) and returns its values as `Term`s:

- an **elementwise** ``(B, D)`` tensor of squared regression errors (L2, FitNet, AT; VID's Gaussian
  NLL) that a weighting reduces over dimensions (sum or mean) and over the batch — PAD needs this
  form, because its variance is per dimension; or
- a **per-sample** ``(B,)`` tensor (cosine, HKD, and the relation losses, whose per-sample value is
  the contribution of sample i as the *anchor* of its row of the B×B relation matrix, so that the
  batch mean of the per-sample values equals the original batch-level loss unless said otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from facekd.losses.registry import NoOptions, OptionsModel, Registry
from facekd.losses.variance import PadBranches
from facekd.losses.weighting import Term

__all__ = [
    "LOSSES",
    "DistillLoss",
    "Features",
    "LossContext",
    "MapLoss",
    "MapOptions",
    "Shape",
    "check_pair",
    "match_spatial",
    "register_loss",
]

Shape = tuple[int, int, int]


@dataclass
class Features:
    """What a network hands to the distiller for one batch.

    embedding: (B, d) raw embedding (the distiller normalises it when asked).
    maps: optional list of stage feature maps (B, C_l, H_l, W_l), shallow to deep (FitNet, AT).
    logits: optional (B, C) class logits (HKD, GKD). A face student's logits come from its margin
        head; a cached teacher has none, so logit losses need an online teacher with a head.
    labels: optional (B,) int64 class labels of the batch (EKD, GKD, AdaDistill, MarginDistillation).
    backbone: optional (B, ...) input of the student's embedding layer (what PAD's variance branch
        reads beside the embedding); the Distiller fills it from its `BackboneTap` when not given.
    """

    embedding: torch.Tensor
    maps: list[torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    backbone: torch.Tensor | None = None


def check_pair(s: torch.Tensor, t: torch.Tensor, name: str) -> None:
    """ValueError unless the student and teacher tensors have the same shape."""
    if s.shape != t.shape:
        raise ValueError(f"{name}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}")


def match_spatial(student_map: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize a student map (B, C, H, W) to the teacher's (H_t, W_t) when they differ."""
    if tuple(student_map.shape[-2:]) == tuple(size):
        return student_map
    return F.interpolate(student_map, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


@dataclass
class LossContext:
    """What a Distiller knows when it builds a loss (besides the loss's own options).

    student_dim / teacher_dim: embedding widths. student_shapes / teacher_shapes: (C, H, W) of every
    stage map (probed by `Distiller.from_config`). num_classes / class_centres: the training set's
    class count and the teacher's (C, d) class centres (a tensor, or a file holding one), for the
    losses that live in a margin head. pad: the variance branches when the weighting is PAD.
    """

    student_dim: int | None = None
    teacher_dim: int | None = None
    student_shapes: Sequence[Shape] | None = None
    teacher_shapes: Sequence[Shape] | None = None
    num_classes: int | None = None
    class_centres: torch.Tensor | str | None = None
    pad: PadBranches | None = None

    def dims(self, loss: str) -> tuple[int, int]:
        """(student_dim, teacher_dim); ValueError when either is missing."""
        if self.student_dim is None or self.teacher_dim is None:
            raise ValueError(f"loss {loss!r} needs student_dim and teacher_dim")
        return self.student_dim, self.teacher_dim


class DistillLoss(nn.Module):
    """Base of the registered distillation losses: forward(student, teacher, mask) → [Term].

    For ``reads == "embedding"`` the Distiller hands over the compared embeddings: the student
    projected (when ``projects`` and the widths differ) and both L2-normalised (when `normalize`),
    the teacher detached. Maps and logits arrive as the networks produced them.
    """

    name: ClassVar[str] = ""
    reads: ClassVar[Literal["embedding", "maps", "logits"]] = "embedding"
    needs_labels: ClassVar[bool] = False
    pad_compatible: ClassVar[bool] = False
    projects: ClassVar[bool] = False
    Options: ClassVar[type[OptionsModel]] = NoOptions

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__()
        self.options = options

    @classmethod
    def requires_shapes(cls, pad: bool) -> bool:
        """True when the stage-map shapes must be known at construction (FitNet, PAD on maps)."""
        return False

    def forward(
        self, student: Features, teacher: Features, mask: torch.Tensor | None = None
    ) -> list[Term]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())


LOSSES: Registry[type[DistillLoss]] = Registry("distillation loss", "facekd.losses.distill")
register_loss = LOSSES.register


def _shape(shape: Sequence[int]) -> Shape:
    c, h, w = shape
    return int(c), int(h), int(w)


class MapOptions(OptionsModel):
    """Options of every feature-map loss."""

    layers: list[int] | None = None  # indices of the stage maps used (None: all)


class MapLoss(DistillLoss):
    """Base of the feature-map losses (FitNet, AT): stage selection, shape checks, spatial masks."""

    reads = "maps"
    options: MapOptions

    def __init__(self, options: OptionsModel, ctx: LossContext):
        super().__init__(options, ctx)
        self.layers: list[int] = list(self.options.layers) if self.options.layers is not None else []

    @classmethod
    def requires_shapes(cls, pad: bool) -> bool:
        return pad

    def stages(self, ctx: LossContext) -> list[tuple[Shape, Shape]]:
        """(student, teacher) (C, H, W) of every chosen stage, from the context; fixes `layers`."""
        s_shapes, t_shapes = ctx.student_shapes, ctx.teacher_shapes
        if s_shapes is None or t_shapes is None:
            raise ValueError(
                f"{self.name}{' with pad' if ctx.pad is not None else ''} needs options student_shapes and "
                "teacher_shapes ((C, H, W) of each stage map); Distiller.from_config(..., "
                "student=, teacher=, input_size=) probes them"
            )
        n = len(s_shapes)
        if len(t_shapes) != n:
            raise ValueError(f"{self.name}: student has {n} stage maps, teacher {len(t_shapes)}")
        layers = self.options.layers
        self.layers = [i % n for i in (layers if layers is not None else range(n))]
        return [(_shape(s_shapes[i]), _shape(t_shapes[i])) for i in self.layers]

    def select(self, student: Features, teacher: Features) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The chosen stage maps of both networks; the teacher's detached."""
        if not student.maps or not teacher.maps:
            raise ValueError(
                f"loss {self.name!r} needs stage feature maps from both networks "
                "(an online teacher with return_features=True; a cached teacher has only embeddings)"
            )
        if len(student.maps) != len(teacher.maps):
            raise ValueError(f"student has {len(student.maps)} stage maps, teacher {len(teacher.maps)}")
        n = len(student.maps)
        idx = [i % n for i in self.layers] if self.layers else list(range(n))
        return [student.maps[i] for i in idx], [teacher.maps[i].detach() for i in idx]

    @staticmethod
    def stage_mask(mask: torch.Tensor | None, size: Sequence[int], channels: int) -> torch.Tensor | None:
        """Spatial mask (B, H, W) / (B, 1, H, W) → nearest-resized, channel-broadcast, flattened."""
        if mask is None:
            return None
        m = mask[:, None] if mask.dim() == 3 else mask
        if m.dim() != 4 or m.shape[1] != 1:
            raise ValueError(f"spatial mask must be (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
        m = F.interpolate(m.float(), size=tuple(size), mode="nearest")
        return m.expand(-1, channels, -1, -1).flatten(1)
