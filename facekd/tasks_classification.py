"""Classification students: CE + λ·distill on any `ArrayDataset` of images and labels.

PAD's classification setting (Sec. 5.1: L = L_CE + λ·L_distill, Eq. 2) for small image classifiers,
e.g. Fashion-MNIST read from its IDX files by `facekd.data.arrays.load_fashion_mnist`. The task
plugs into `facekd.train.train` like `FaceTask`: `forward(batch, step) -> (loss, logs)`, and the
student is `task.student` (what `train()` saves as backbone.pth).

- `SmallCNN`: a 3-stage conv net that follows the model contract (`forward(x)` → embedding,
  `forward(x, return_features=True)` → (embedding, [stage maps])), so every distillation loss of
  `facekd.losses.distiller` applies (L2 on the embedding, FitNet / AT on the maps, HKD on logits).
- `ClassificationTask(student, head, distiller=None, teacher=None)`: head is a plain linear
  classifier on the embedding; the distiller sees `Features(embedding, maps, logits)`.
- `ClassifierTeacher(model, head)`: a frozen classifier that gives `Features` with logits (HKD).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facekd.losses.distiller import Features

__all__ = ["SmallCNN", "ClassifierTeacher", "ClassificationTask"]


class SmallCNN(nn.Module):
    """Three conv stages (3×3 conv–BN–ReLU, ×2 downsampling in stages 2 and 3), global average
    pooling and a linear embedding layer.

    Input (B, 3, H, W) in [-1, 1] (grey images are repeated to 3 channels by ArrayDataset);
    output embedding (B, embedding_size); stage maps (B, w, H, W), (B, 2w, H/2, W/2), (B, 4w, H/4, W/4).
    """

    def __init__(self, embedding_size: int = 64, width: int = 16, in_channels: int = 3):
        super().__init__()

        def stage(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        self.stages = nn.ModuleList([stage(in_channels, width, 1), stage(width, 2 * width, 2), stage(2 * width, 4 * width, 2)])
        self.fc = nn.Linear(4 * width, embedding_size)
        self.embedding_size = embedding_size

    def forward(self, x: torch.Tensor, return_features: bool = False):
        maps = []
        for s in self.stages:
            x = s(x)
            maps.append(x)
        emb = self.fc(x.mean(dim=(2, 3)))
        return (emb, maps) if return_features else emb


class ClassifierTeacher(nn.Module):
    """A frozen classifier (backbone + linear head) as a teacher: `forward(batch, need_maps)` →
    Features(embedding, maps (if asked), logits). Always in eval mode, no gradients."""

    provides_maps = True

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch: dict, need_maps: bool = False) -> Features:
        x = batch["image"]
        emb, maps = self.model(x, return_features=True) if need_maps else (self.model(x), None)
        return Features(embedding=emb.float(), maps=maps, logits=self.head(emb).float())


class ClassificationTask(nn.Module):
    """loss = mean_b cls_loss(head(student(x_b)), y_b) + distiller(Features(student), teacher(batch), step).

    Args:
        student: a model following the contract (forward(x[, return_features])).
        head: linear classifier embedding → logits (B, C).
        distiller: optional `Distiller` (λ and the weighting are inside it).
        teacher: required with a distiller: `ClassifierTeacher` (logits, maps), or the spine's
            `OnlineTeacher` / `CachedTeacher` for embedding / map losses.
        cls_loss: per-sample loss (logits, labels) → (B,); default cross-entropy.
    """

    def __init__(self, student: nn.Module, head: nn.Module, distiller: nn.Module | None = None,
                 teacher: nn.Module | None = None, cls_loss: nn.Module | None = None):
        super().__init__()
        if distiller is not None and teacher is None:
            raise ValueError("ClassificationTask: a distiller needs a teacher")
        self.student, self.head, self.distiller, self.teacher, self.cls_loss = student, head, distiller, teacher, cls_loss

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        need_maps = bool(getattr(self.distiller, "needs_maps", False))
        if need_maps:
            emb, maps = self.student(batch["image"], return_features=True)
        else:
            emb, maps = self.student(batch["image"]), None
        logits = self.head(emb)
        labels = batch["label"]
        per_sample = self.cls_loss(logits, labels) if self.cls_loss is not None else F.cross_entropy(logits, labels, reduction="none")
        cls = per_sample.mean()
        loss = cls
        logs = {"cls": float(cls.detach()), "acc": float((logits.argmax(1) == labels).float().mean())}
        if self.distiller is not None:
            target = self.teacher(batch, need_maps)
            if getattr(self.distiller, "needs_logits", False) and target.logits is None:
                raise ValueError("loss 'hkd' needs teacher logits: use ClassifierTeacher(model, head)")
            dl, dlogs = self.distiller(Features(emb, maps, logits), target, step)
            loss = loss + dl
            logs["distill"] = float(dl.detach())
            logs.update(dlogs)
        return loss, logs
