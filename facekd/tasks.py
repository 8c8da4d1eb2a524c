"""Training tasks: what `facekd.train.train` optimises, for the three kinds of students.

A *task* is an `nn.Module` that holds everything with parameters the loss needs (student, head,
distiller projection, PAD branch, class centres) and whose `forward(batch, step)` returns
`(scalar loss, logs dict[str, tensor])`; the student is `task.student` (what `train()` saves as
backbone.pth). Logs are detached 0-d tensors, read back by the trainer only every `log_every`
steps (floats are accepted too): a task never synchronises with the device. Every task adds the
same optional distillation term `distiller(Features(student), teacher(batch), step)` (λ and the
weighting live in the Distiller), so every distillation loss and weighting (PAD included) and
every sampler applies to each kind:

- `FaceTask`: margin head (ArcFace / CosFace / softmax, or the sharded PartialFC) + per-sample
  classification loss, or feature-only (head=None, ReFO).
- `ClassificationTask`: linear classifier + CE (PAD's classification setting, Sec. 5.1, Eq. 2),
  e.g. Fashion-MNIST with `facekd.models` `small_cnn`; `ClassifierTeacher` gives teacher logits (HKD).
- `MetricTask`: re-ID / metric learning, the bag-of-tricks recipe of reid-strong-baseline:
  ID loss (label-smoothed softmax or a margin head) on the BNNeck output + batch-hard triplet
  (+ center loss) on the feature before the BNNeck.

Teacher providers: `CachedTeacher(cache)` (an EmbeddingCache looked up by `batch["index"]`),
`OnlineTeacher(model[, head])` (a frozen model run on the batch), `ClassifierTeacher(model, head)`.
All are called as `teacher(batch, need_maps, need_logits) -> Features`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekd.losses import scale_grad
from facekd.losses.distiller import Features
from facekd.losses.metric import CenterLoss, batch_hard_triplet
from facekd.models import embedding_dim
from facekd.models.heads import float32_region

__all__ = [
    "CachedTeacher",
    "ClassificationTask",
    "ClassifierTeacher",
    "FaceTask",
    "MetricTask",
    "OnlineTeacher",
    "TeacherProvider",
]


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------


class CachedTeacher(nn.Module):
    """Teacher targets read from an EmbeddingCache by dataset row (`batch["index"]`).

    The cache must have been computed on the *training dataset itself* (same rows); its
    embeddings are used as stored (normalised when the cache is).

    Holds no parameters or buffers (the cache stays a memory map, never enters a state_dict).
    Returns `Features(embedding (B, d) float32 on the batch's device, maps=None)`.
    """

    def __init__(self, cache):
        super().__init__()
        self.cache = cache
        self.dim = int(cache.embeddings.shape[1])

    def embedding_dim(self, input_size=None) -> int:
        """Width d of the cached embeddings."""
        return self.dim

    def check_dataset(self, dataset) -> None:
        """Raise ValueError unless the cache was computed on the rows of `dataset` without its
        augmentation (fingerprint and size)."""
        fp = self.cache.meta.get("dataset_fingerprint")
        content = str(dataset.without_augmentation().fingerprint())
        if fp != content or len(self.cache) != len(dataset):
            raise ValueError(
                f"teacher cache {self.cache.directory} was computed on dataset {fp} ({len(self.cache)} rows), "
                f"not on the training dataset {content} ({len(dataset)} rows)"
            )

    def forward(self, batch: dict, need_maps: bool = False, need_logits: bool = False) -> Features:
        if need_maps or need_logits:
            raise ValueError(
                "teacher.cache holds embeddings only, and this distill.loss reads the teacher's feature maps or "
                "logits: give teacher {checkpoint, arch, online: true} (and head: <teacher run>/head.pth for logits)"
            )
        idx = batch["index"].cpu().numpy()
        rows = len(self.cache.embeddings)
        if idx.size and (idx.min() < 0 or idx.max() >= rows):
            raise ValueError(
                f"teacher cache {self.cache.directory}: batch index {int(idx.max())} outside its {rows} rows"
            )
        emb = torch.from_numpy(np.ascontiguousarray(self.cache.embeddings[idx], dtype=np.float32))
        return Features(embedding=emb.to(batch["image"].device, non_blocking=True))


class _FrozenTeacher(nn.Module):
    """A frozen model (and optional head): no gradients, always in eval mode whatever the task's mode."""

    def __init__(self, model: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.head = head
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def embedding_dim(self, input_size: int | tuple[int, int]) -> int:
        """Width d of the teacher's embedding for inputs of `input_size` (probed once)."""
        return embedding_dim(self.model, input_size)

    def _embed(self, x: torch.Tensor, need_maps: bool):
        if need_maps:
            emb, maps = self.model(x, return_features=True)
            return emb.float(), [m.float() for m in maps]
        return self.model(x).float(), None


class OnlineTeacher(_FrozenTeacher):
    """A frozen teacher run on the batch's images (needed when augmentations change the input, and
    for feature-map losses). With a `head` (the teacher's margin head) it also returns logits
    `head(emb, labels)` for logit losses (HKD)."""

    @torch.no_grad()
    def forward(self, batch: dict, need_maps: bool = False, need_logits: bool = False) -> Features:
        emb, maps = self._embed(batch["image"], need_maps)
        logits = None
        if need_logits:
            if self.head is None:
                raise ValueError(
                    "this distill.loss reads the teacher's logits: give the teacher block its head "
                    "(teacher: {checkpoint, arch, head: <teacher run>/head.pth, online: true})"
                )
            logits = self.head(emb, batch["label"]).float()
        return Features(embedding=emb, maps=maps, logits=logits)


class ClassifierTeacher(_FrozenTeacher):
    """A frozen classifier (backbone + linear head `head(emb) -> logits`) as a teacher:
    `forward(batch, need_maps)` → Features(embedding, maps (if asked), logits (always))."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__(model, head)

    @torch.no_grad()
    def forward(self, batch: dict, need_maps: bool = False, need_logits: bool = False) -> Features:
        emb, maps = self._embed(batch["image"], need_maps)
        head = self.head
        assert head is not None  # a ClassifierTeacher always has its head
        return Features(embedding=emb, maps=maps, logits=head(emb).float())


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


class _Task(nn.Module):
    """Shared parts: the student forward (with maps when the distiller reads them) and the
    distillation term."""

    cls_loss: nn.Module | None  # set by each task

    def __init__(self, student: nn.Module, distiller: nn.Module | None, teacher: nn.Module | None):
        super().__init__()
        if distiller is not None and teacher is None:
            raise ValueError(
                "a distill block needs a teacher block (teacher: {cache: ...} or {checkpoint: ..., arch: ...})"
            )
        self.student = student
        self.distiller = distiller
        self.teacher = teacher

    @property
    def _need_maps(self) -> bool:
        return self.distiller is not None and bool(getattr(self.distiller, "needs_maps", False))

    @property
    def _need_logits(self) -> bool:
        return self.distiller is not None and bool(getattr(self.distiller, "needs_logits", False))

    def _run_student(self, x: torch.Tensor):
        """(embedding (B, d), stage maps or None)."""
        if self._need_maps:
            return self.student(x, return_features=True)
        return self.student(x), None

    def _cls_mean(self, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean over the batch of `self.cls_loss(logits, labels)` (B,), or of cross-entropy when the
        task has none. Float32 scalar, computed with autocast off."""
        with float32_region(logits):
            if self.cls_loss is not None:
                per_sample = self.cls_loss(logits, labels)
            else:
                per_sample = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
            return per_sample.float().mean()

    def _distill(self, batch: dict, emb: torch.Tensor, maps, logits, step: int) -> tuple[torch.Tensor, dict]:
        """distiller(Features(student), teacher(batch), step) → (scalar, logs incl. "distill").

        The teacher runs under the caller's autocast; the distiller (its projection and loss)
        in float32 with autocast off."""
        assert self.teacher is not None and self.distiller is not None  # checked in __init__
        need_maps, need_logits = self._need_maps, self._need_logits
        target = self.teacher(batch, need_maps, need_logits)
        if need_logits and target.logits is None:
            raise ValueError(
                f"distill.loss {self.distiller.loss_name} reads the teacher's logits: give the teacher block its "
                "head (teacher: {checkpoint, arch, head: <teacher run>/head.pth, online: true})"
            )
        student = Features(
            embedding=emb.float(),
            maps=[m.float() for m in maps] if maps is not None else None,
            logits=logits.float() if need_logits else None,
            labels=batch["label"],
        )
        with float32_region(emb):
            dl, dlogs = self.distiller(student, target, step)
        return dl, {"distill": dl.detach(), **dlogs}


class FaceTask(_Task):
    """Student + optional margin head / classification loss + optional distiller.

    loss = mean_b cls_loss(head(student(x_b), y_b), y_b)  (if head)
         + distiller(Features(student), teacher(batch), step)  (if distiller; λ is inside it)
    With `head=None` labels are never used (feature-only students, ReFO). `cls_loss` maps
    (logits (B, C), labels (B,)) to per-sample losses (B,); default plain cross-entropy.
    The head and the losses run in float32 even under AMP.

    A head with `returns_loss` (the sharded `facekd.models.partial_fc.PartialFC`) gives the
    classification loss itself (its cross-entropy over the global batch); it takes no `cls_loss`
    and gives no logits to the distiller.
    """

    def __init__(
        self,
        student: nn.Module,
        head: nn.Module | None = None,
        cls_loss: nn.Module | None = None,
        distiller: nn.Module | None = None,
        teacher: nn.Module | None = None,
    ):
        if head is None and distiller is None:
            raise ValueError("FaceTask needs a head, a distiller, or both")
        super().__init__(student, distiller, teacher)
        self.head = head
        self.cls_loss = cls_loss
        if getattr(head, "returns_loss", False):
            if cls_loss is not None:
                raise ValueError(f"{type(head).__name__} computes its own cross-entropy: give no cls_loss")
            if self._need_logits:
                raise ValueError(f"{type(head).__name__} gives no logits, which this distiller reads: use a full head")

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._need_logits and self.head is None:
            raise ValueError("this distill.loss reads the student's logits: task face needs a head block")
        emb, maps = self._run_student(batch["image"])
        logs: dict[str, torch.Tensor] = {}
        loss = emb.new_zeros((), dtype=torch.float32)
        logits = None
        if self.head is not None:
            labels = batch["label"]
            if getattr(self.head, "returns_loss", False):
                cls = self.head(emb.float(), labels)
            else:
                logits = self.head(emb.float(), labels)
                cls = self._cls_mean(logits, labels)
            loss = loss + cls
            logs["cls"] = cls.detach()
        if self.distiller is not None:
            dl, dlogs = self._distill(batch, emb, maps, logits, step)
            loss = loss + dl
            logs.update(dlogs)
        return loss, logs


class ClassificationTask(_Task):
    """loss = mean_b cls_loss(head(student(x_b)), y_b) + distiller(Features(student), teacher(batch), step).

    PAD's classification setting (Sec. 5.1, Eq. 2: L = L_CE + λ·L_distill) for small image
    classifiers (e.g. Fashion-MNIST read by `facekd.data.arrays.load_fashion_mnist`).

    Args:
        student: a model following the contract (forward(x[, return_features])).
        head: linear classifier embedding → logits (B, C) (called as `head(emb)`, no labels).
        distiller: optional `Distiller` (λ and the weighting are inside it); it sees
            `Features(embedding, maps, logits)`.
        teacher: required with a distiller: `ClassifierTeacher` (logits, maps), or
            `OnlineTeacher` / `CachedTeacher` for embedding / map losses.
        cls_loss: per-sample loss (logits, labels) → (B,); default cross-entropy.
    Logs: cls, acc (batch accuracy), distill and the distiller's logs.
    """

    def __init__(
        self,
        student: nn.Module,
        head: nn.Module,
        distiller: nn.Module | None = None,
        teacher: nn.Module | None = None,
        cls_loss: nn.Module | None = None,
    ):
        super().__init__(student, distiller, teacher)
        self.head, self.cls_loss = head, cls_loss

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb, maps = self._run_student(batch["image"])
        logits = self.head(emb)
        labels = batch["label"]
        loss = self._cls_mean(logits, labels)
        logs = {"cls": loss.detach(), "acc": (logits.argmax(1) == labels).float().mean()}
        if self.distiller is not None:
            dl, dlogs = self._distill(batch, emb, maps, logits, step)
            loss = loss + dl
            logs.update(dlogs)
        return loss, logs


class MetricTask(_Task):
    """Re-ID / metric-learning student (bag-of-tricks, reid-strong-baseline) with optional distillation.

    loss = mean_b ID(head(f_after_b, y_b), y_b)                 (if head)
         + triplet_weight · mean_b triplet_b(f_before)          (batch-hard, `batch_hard_triplet`)
         + center_weight · mean_b ‖f_before_b − c_{y_b}‖²       (if center)
         + distiller(Features(f_distill), teacher(batch), step) (if distiller)

    BNNeck: when `bnneck=True` and the student has a `bottleneck` module (facekd's ReIDNet:
    `resnet50_reid`, `shufflenet_v2_x0_5`), f_before is the bottleneck's input and f_after its
    output (read with a forward hook, so the student's own `forward` is unchanged and returns
    its test-time feature, `neck_feat="after"` by default). With `neck_feat="before"` the task
    applies the bottleneck itself. Without a BNNeck, f_before = f_after = the embedding.

    Args:
        student: model following the contract.
        head: `heads.get_head(...)` module (softmax or a margin head), `forward(f_after, labels)`;
            None = no ID loss (triplet / distillation only).
        cls_loss: per-sample (logits, labels) → (B,); default cross-entropy with
            `label_smoothing` (ε = 0.1, RSB's CrossEntropyLabelSmooth: (1−ε)·one-hot + ε/C).
        triplet_margin: 0.3 (RSB); None = soft margin. triplet_weight: 1.0 (0 = off).
        triplet_normalize: L2-normalise before the triplet distances (False, as RSB).
        center: `CenterLoss(num_classes, dim of f_before)` or None; center_weight 5e-4 (RSB).
            As in RSB, the weight scales only the gradient reaching the features: the centres are
            updated by the gradient of the unweighted loss (RSB divides their gradient by the
            weight and steps them with a separate SGD, lr 0.5; here the task's optimizer and lr).
        distill_feat: "after" (default: the feature the student outputs at test time, i.e. what a
            teacher EmbeddingCache holds) or "before" the BNNeck.
    Logs: cls, acc, triplet, center, distill and the distiller's logs.
    """

    def __init__(
        self,
        student: nn.Module,
        head: nn.Module | None = None,
        cls_loss: nn.Module | None = None,
        label_smoothing: float = 0.1,
        triplet_margin: float | None = 0.3,
        triplet_weight: float = 1.0,
        triplet_normalize: bool = False,
        center: CenterLoss | None = None,
        center_weight: float = 5e-4,
        bnneck: bool = True,
        distill_feat: str = "after",
        distiller: nn.Module | None = None,
        teacher: nn.Module | None = None,
    ):
        super().__init__(student, distiller, teacher)
        if distill_feat not in ("after", "before"):
            raise ValueError(f"MetricTask: distill_feat must be 'after' or 'before', got {distill_feat!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"MetricTask: label_smoothing must lie in [0, 1), got {label_smoothing}")
        if triplet_weight < 0 or center_weight < 0:
            raise ValueError("MetricTask: triplet_weight and center_weight must be ≥ 0")
        if head is None and triplet_weight == 0 and center is None and distiller is None:
            raise ValueError("MetricTask needs a head, a triplet loss, a center loss or a distiller")
        self.head, self.cls_loss, self.label_smoothing = head, cls_loss, float(label_smoothing)
        self.triplet_margin, self.triplet_weight = triplet_margin, float(triplet_weight)
        self.triplet_normalize = bool(triplet_normalize)
        self.center, self.center_weight = center, float(center_weight)
        self.bnneck, self.distill_feat = bool(bnneck), distill_feat

    def _neck(self) -> nn.Module | None:
        return getattr(self.student, "bottleneck", None) if self.bnneck else None

    def features(self, x: torch.Tensor):
        """(f_before (B, d), f_after (B, d), maps or None) for images x (B, 3, H, W)."""
        neck = self._neck()
        if neck is None:
            emb, maps = self._run_student(x)
            return emb, emb, maps
        seen: dict[str, torch.Tensor] = {}

        def hook(module, inputs, output):
            seen["before"], seen["after"] = inputs[0], output

        handle = neck.register_forward_hook(hook)
        try:
            emb, maps = self._run_student(x)
        finally:
            handle.remove()
        if not seen:  # the student returns the feature before its neck (neck_feat="before")
            return emb, neck(emb), maps
        return seen["before"], seen["after"], maps

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        before, after, maps = self.features(batch["image"])
        before, after = before.float(), after.float()
        labels = batch["label"]
        loss = after.new_zeros(())
        logs: dict[str, torch.Tensor] = {}
        logits = None
        if self.head is not None:
            logits = self.head(after, labels)
            cls = self._cls_mean(logits, labels, self.label_smoothing)
            loss = loss + cls
            logs["cls"] = cls.detach()
            logs["acc"] = (logits.argmax(1) == labels).float().mean()
        if self.triplet_weight > 0:
            tri = batch_hard_triplet(before, labels, self.triplet_margin, self.triplet_normalize).mean()
            loss = loss + self.triplet_weight * tri
            logs["triplet"] = tri.detach()
        if self.center is not None:
            w = self.center_weight
            # value and feature gradient weighted by w; the centres get the unweighted gradient
            c = self.center(scale_grad(before, w), labels).mean()
            loss = loss + c - (1.0 - w) * c.detach()
            logs["center"] = c.detach()
        if self.distiller is not None:
            if self._need_logits and logits is None:
                raise ValueError("this distill.loss reads the student's logits: task metric needs a head block")
            emb = after if self.distill_feat == "after" else before
            dl, dlogs = self._distill(batch, emb, maps, logits, step)
            loss = loss + dl
            logs.update(dlogs)
        return loss, logs


# What a task's `teacher` may be (each has `embedding_dim(input_size)`).
TeacherProvider = CachedTeacher | OnlineTeacher | ClassifierTeacher
