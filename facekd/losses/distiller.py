"""`Distiller`: one distillation loss + one weighting scheme + λ, as a training task holds it.

    loss = λ · warmup(step) · weighting(per-sample distillation loss)

The Distiller is an `nn.Module` that owns every parameter the distillation needs — the linear
projection when the student and teacher embedding sizes differ, PAD's variance branches, and the
loss module with its own parameters (FitNet's 1×1 regressors, VID's regressor and variance, class
centres) — so a task that holds it (and is wrapped in DDP) trains and synchronises them. None of it
is part of the student: it is never exported.

Config (the `distill:` block of a training config)::

    distill: {loss: l2, weighting: pad, lambda: 1.0, options: {sigma: per_dim}}

is built with `Distiller.from_config(cfg, student_dim, teacher_dim, student=..., teacher=...)`.
Losses and weightings are looked up by name in `facekd.losses.distill.LOSSES` and
`facekd.losses.weighting.WEIGHTINGS`; nothing here depends on which one. See docs/distillation.md
for the table of losses, weightings and options.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facekd.losses.distill import LOSSES, DistillLoss, Features, LossContext
from facekd.losses.gradient import scale_grad
from facekd.losses.registry import parse_options
from facekd.losses.variance import BackboneTap, probe_backbone_dim
from facekd.losses.weighting import WEIGHTINGS, Term, Weighting, gap, get_weighting, warmup_factor

__all__ = ["LOSSES", "Distiller", "Features", "probe_feature_shapes"]

# Options the Distiller itself takes: the warm-up, and the context a loss may need (stage-map shapes,
# class count, the teacher's class centres, the width of the backbone feature PAD's branch reads),
# which `from_config` can fill in from the networks.
DISTILLER_OPTIONS = ("warmup_steps", "student_shapes", "teacher_shapes", "num_classes", "class_centres", "backbone_dim")

# PAD's loss split (`PADWeighting.parts`, batch means) → log keys
PAD_LOGS = {
    "weighted_gap": "distill/pad_weighted_gap",
    "log_sigma2": "distill/pad_log_sigma2",
    "effective_weight": "distill/pad_weight",
}


def probe_feature_shapes(
    model: nn.Module, input_size: int | tuple[int, int], in_channels: int = 3
) -> list[tuple[int, int, int]]:
    """Run a 2-image dummy batch of `input_size` (side, or (H, W) e.g. re-ID's (256, 128)) through
    `model(x, return_features=True)` in eval mode (no grad, no BN statistics change) and return the
    (C, H, W) of each stage map."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(2, in_channels, h, w, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            out = model(x, return_features=True)
    finally:
        model.train(was_training)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError("model(x, return_features=True) must return (embedding, [feature maps])")
    return [(int(m.shape[1]), int(m.shape[2]), int(m.shape[3])) for m in out[1]]


def _split_options(
    loss: type[DistillLoss], weighting: type[Weighting], options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The flat `options` → (loss options, weighting options, Distiller options), by the schemas."""
    loss_keys, w_keys = set(loss.Options.model_fields), set(weighting.Options.model_fields)
    if clash := (loss_keys & w_keys) | ((loss_keys | w_keys) & set(DISTILLER_OPTIONS)):
        raise ValueError(
            f"options {sorted(clash)} are declared twice (loss {loss.name!r}, weighting {weighting.name!r})"
        )
    allowed = loss_keys | w_keys | set(DISTILLER_OPTIONS)
    unknown = set(options) - allowed
    owners = {n: set(w.Options.model_fields) & unknown for n, w in WEIGHTINGS.items()}
    owners = {n: keys for n, keys in owners.items() if keys}
    if unknown and unknown == set().union(*owners.values()):  # options of other weightings
        names = " or ".join(repr(n) for n in sorted(owners))
        raise ValueError(f"options {sorted(unknown)} apply only to weighting {names}, not {weighting.name!r}")
    if unknown:
        raise ValueError(
            f"distiller ({loss.name}/{weighting.name}): unknown options {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    parts = (loss_keys, w_keys, set(DISTILLER_OPTIONS))
    loss_opts, w_opts, own = ({k: v for k, v in options.items() if k in keys} for keys in parts)
    return loss_opts, w_opts, own


def _probe_options(
    options: dict[str, Any],
    loss: str,
    weighting: str,
    student: nn.Module | None,
    teacher: nn.Module | None,
    input_size: int | tuple[int, int] | None,
    in_channels: int,
) -> None:
    """Fill the options a loss needs from the networks when the config does not give them: the
    stage-map shapes (FitNet, PAD on maps) and the width of the backbone feature PAD's branch reads."""
    loss_cls, w_cls = LOSSES.get(loss), WEIGHTINGS.get(weighting)
    if loss_cls is None or w_cls is None:
        return  # the constructor names the unknown loss or weighting
    if loss_cls.requires_shapes(w_cls.uses_variance) and not {"student_shapes", "teacher_shapes"} <= set(options):
        if student is None or teacher is None or input_size is None:
            raise ValueError(
                f"distill loss {loss!r}: give options student_shapes/teacher_shapes, "
                "or student, teacher and input_size to probe them"
            )
        options.setdefault("student_shapes", probe_feature_shapes(student, input_size, in_channels))
        options.setdefault("teacher_shapes", probe_feature_shapes(teacher, input_size, in_channels))
    w_opts = {k: v for k, v in options.items() if k in w_cls.Options.model_fields}
    reads_backbone = loss_cls.reads == "embedding" and w_cls.reads_backbone(w_opts)
    if reads_backbone and "backbone_dim" not in options and student is not None and input_size is not None:
        options["backbone_dim"] = probe_backbone_dim(student, input_size, in_channels)


class Distiller(nn.Module):
    """Distillation loss module: forward(student: Features, teacher: Features, step, mask=None)
    → (scalar loss, logs dict[str, tensor | float]: 0-d tensors, read back by the caller when it logs).

    Args:
        loss: a name of `LOSSES` (l2, cosine, hkd, fitnet, at, rkd, cc, sp, pkt, darkrank, vid, and
            the face-specific ekd, gkd, adadistill, margin_distillation).
        weighting: a name of `WEIGHTINGS` (uniform, warmup, soft_exp, soft_poly, hard_mining,
            hard_discarding, pad).
        lam: λ of Eq. 2 (the weight of the distillation loss in the task loss).
        student_dim / teacher_dim: embedding sizes; a Linear projection (student → teacher) is added
            for the losses that compare embeddings directly (l2, cosine, ...) when they differ
            (FitNet-style, as PAD Sec. 3.1 says).
        normalize: L2-normalise the (projected) student and the teacher embedding before an
            embedding loss (default True: face embeddings are compared on the unit sphere).
        options (flat; all optional): the loss's options (its `Options` schema), the weighting's
            (dim_reduce "sum" / "mean", detach_weights, T, alpha, fraction, and PAD's sigma,
            branch_input, detach, init_logvar, branch_grad, l2_stage_steps, var_eps), and the
            Distiller's own:
            warmup_steps: λ ramps linearly from 0 to λ over this many steps (default 0 = off;
                required > 0 with weighting "warmup").
            student_shapes / teacher_shapes: (C, H, W) of every stage map; needed by fitnet and by
                PAD on maps (`from_config` probes them from the models).
            num_classes / class_centres: the class count and the teacher's (C, d) class centres
                (tensor or file), for the losses that live in a margin head.
            backbone_dim: width of the flattened input of the student's embedding layer, read by
                PAD's branch on l2 (`from_config` probes it from the student).

    PAD on an embedding loss with `branch_input: backbone` reads `Features.backbone`; when a task
    does not fill it, the Distiller takes it from the student it was attached to (`attach`, done by
    `from_config(student=...)`): a forward pre-hook on the student's embedding layer.

    After a forward, `per_sample_stats` gives detached (B,) tensors: "gap" (d_i), "weight" (the
    normalised weight of each sample) and, with PAD, "variance" (mean σ² of the sample),
    "log_variance" (mean ln σ²) and "effective_weight" (see `PADWeighting`).
    """

    def __init__(
        self,
        loss: str = "l2",
        weighting: str = "uniform",
        lam: float = 1.0,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        normalize: bool = True,
        **options: Any,
    ):
        super().__init__()
        loss_cls, w_cls = LOSSES.lookup(loss), WEIGHTINGS.lookup(weighting)
        loss_opts, w_opts, own = _split_options(loss_cls, w_cls, options)
        self.loss_name, self.weighting_name = loss, weighting
        self.lam = float(lam)
        self.normalize = bool(normalize)
        self.warmup_steps = int(own.get("warmup_steps", 0))
        if w_cls.requires_warmup and self.warmup_steps <= 0:
            raise ValueError(f"weighting {weighting!r} needs options.warmup_steps > 0 (the ramp length in steps)")
        if w_cls.uses_variance and not loss_cls.pad_compatible:
            compatible = ", ".join(n for n, c in LOSSES.items() if c.pad_compatible)
            raise ValueError(f"weighting {weighting!r} needs an L2-form (Gaussian) loss ({compatible}), not {loss!r}")
        self.weighting = get_weighting(weighting, **w_opts)
        self._last: tuple | None = None
        ctx = LossContext(
            student_dim,
            teacher_dim,
            own.get("student_shapes"),
            own.get("teacher_shapes"),
            own.get("num_classes"),
            own.get("class_centres"),
        )
        # creation order (the RNG draws): projection, then the loss's modules and PAD branches
        # interleaved as the loss builds them; registration order: branches, loss, projection
        projection = None
        if loss_cls.projects:
            s_dim, t_dim = ctx.dims(loss)
            projection = nn.Linear(s_dim, t_dim) if s_dim != t_dim else None
        self.var_branches = nn.ModuleList()
        ctx.pad = self._pad = self.weighting.variance_branches(self.var_branches, own.get("backbone_dim"))
        self.is_pad = ctx.pad is not None
        self._tap: BackboneTap | None = None
        self.loss = loss_cls(parse_options(loss_cls.Options, loss_opts, f"distillation loss {loss!r}"), ctx)
        self.projection = projection

    @property
    def needs_maps(self) -> bool:
        """True when the loss reads stage feature maps (the task must run return_features=True)."""
        return self.loss.reads == "maps"

    @property
    def needs_backbone(self) -> bool:
        """True when PAD's branch reads the backbone feature beside the student's embedding layer."""
        return self._pad is not None and self._pad.reads_backbone and self.loss.reads == "embedding"

    def attach(self, student: nn.Module) -> None:
        """Read `Features.backbone` from `student` when a task does not give it: a forward pre-hook
        on the student's embedding layer keeps its input (the student's forward is unchanged)."""
        if self._tap is not None:
            self._tap.remove()
        self._tap = BackboneTap(student) if self.needs_backbone else None

    @property
    def needs_logits(self) -> bool:
        """True when the loss reads class logits (hkd, gkd)."""
        return self.loss.reads == "logits"

    @property
    def needs_labels(self) -> bool:
        """True when the loss reads the batch labels (`Features.labels`: ekd, gkd, adadistill, ...)."""
        return self.loss.needs_labels

    # ------------------------------------------------------------------ construction from config
    @classmethod
    def from_config(
        cls,
        cfg: dict,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        *,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        input_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        num_classes: int | None = None,
        class_centres: torch.Tensor | str | None = None,
    ) -> Distiller:
        """Build from a config block ``{loss, weighting, lambda, options}`` (all but loss optional).

        For map losses (fitnet, at+pad) without student_shapes / teacher_shapes in the options,
        the shapes are probed by a dummy forward of `student` and `teacher` at `input_size`; for
        PAD reading the backbone beside an embedding, `backbone_dim` likewise, and the Distiller is
        attached to `student` (`attach`).
        `num_classes` / `class_centres` (the training set's class count, the teacher's class
        centres) fill the options of the same names when the config does not give them.
        """
        if not isinstance(cfg, dict):
            raise ValueError(f"distill config must be a mapping, got {type(cfg).__name__}")
        unknown = set(cfg) - {"loss", "weighting", "lambda", "lam", "options", "normalize"}
        if unknown:
            raise ValueError(
                f"distill config: unknown keys {sorted(unknown)}; expected loss, weighting, lambda, options"
            )
        options = dict(cfg.get("options") or {})
        loss, weighting = cfg.get("loss", "l2"), cfg.get("weighting", "uniform")
        _probe_options(options, loss, weighting, student, teacher, input_size, in_channels)
        context = {"num_classes": num_classes, "class_centres": class_centres}
        for key, value in context.items():
            if value is not None:
                options.setdefault(key, value)
        distiller = cls(
            loss=loss,
            weighting=weighting,
            lam=cfg.get("lambda", cfg.get("lam", 1.0)),
            student_dim=student_dim,
            teacher_dim=teacher_dim,
            normalize=cfg.get("normalize", True),
            **options,
        )
        if student is not None:
            distiller.attach(student)
        return distiller

    # ------------------------------------------------------------------ forward
    def embedding_pair(self, student: Features, teacher: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, D_t) student / teacher embeddings the embedding losses compare: the student
        projected when the sizes differ, both L2-normalised when `normalize`; teacher detached."""
        s, t = student.embedding, teacher.embedding
        if s.dim() != 2 or t.dim() != 2 or s.shape[0] != t.shape[0]:
            raise ValueError(f"embeddings must be (B, d) with the same B, got {tuple(s.shape)} and {tuple(t.shape)}")
        if self.projection is not None:
            s = self.projection(s)
        t = t.detach()
        if self.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        return s, t

    def _terms(self, student: Features, teacher: Features, mask: torch.Tensor | None) -> list[Term]:
        if mask is not None and not self.needs_maps:
            map_losses = ", ".join(n for n, c in LOSSES.items() if c.reads == "maps")
            raise ValueError(
                f"a spatial mask applies only to feature-map losses ({map_losses}), not {self.loss_name!r}"
            )
        labels = student.labels if student.labels is not None else teacher.labels
        if self.needs_labels and labels is None:
            raise ValueError(
                f"loss {self.loss_name!r} needs the batch labels (Features.labels): the task passes batch['label']"
            )
        if self.loss.reads == "embedding":
            s, t = self.embedding_pair(student, teacher)
            student, teacher = replace(student, embedding=s), replace(teacher, embedding=t)
        return self.loss(replace(student, labels=labels), replace(teacher, labels=labels), mask)

    def forward(
        self, student: Features, teacher: Features, step: int = 0, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Distillation loss λ·warmup(step)·weighting(terms) and logs.

        student / teacher: `Features` of the batch (the teacher's are detached here).
        mask: optional spatial mask (B, H, W) or (B, 1, H, W) for feature-map losses (fitnet, at),
            resized to each stage by nearest neighbour: fine-grained imitation / ROI mimic.
        """
        if self.needs_backbone and student.backbone is None:
            if self._tap is None:
                raise ValueError(
                    "PAD reads the student's backbone feature (Features.backbone): give it, or attach the "
                    "Distiller to the student (Distiller.from_config(..., student=) or attach(student))"
                )
            student = replace(student, backbone=self._tap.take())
        terms = self._terms(student, teacher, mask)
        factor = self.lam * warmup_factor(step, self.warmup_steps)
        pad = self._pad
        if pad is not None and pad.lambda_free and factor > 0:
            # `branch_grad: lambda_free`: undo λ·warm-up on the gradient through the log-variance
            for t in terms:
                t.logvar = scale_grad(t.logvar, 1.0 / factor) if t.logvar is not None else None
        loss, w, d = self.weighting(terms, step)
        log_vars = [pad.log_variance(t.logvar.detach()) for t in terms if t.logvar is not None] if pad else []
        self._last = (d, w, log_vars, gap(terms, "sum").detach() if log_vars else d)
        logs: dict[str, torch.Tensor | float] = {"distill/loss": loss.detach(), "distill/gap": d.mean()}
        if log_vars:
            logs["distill/logvar"] = torch.stack([lv.mean() for lv in log_vars]).mean()
            parts = getattr(self.weighting, "parts", {})
            logs |= {PAD_LOGS[k]: v.mean() for k, v in parts.items()}
        # logs stay on the device: the trainer reads them back every log_every steps
        return factor * loss, {**logs, "distill/lambda": factor}

    @property
    def per_sample_stats(self) -> dict[str, torch.Tensor | None]:
        """Detached (B,) tensors of the last forward: "gap" d_i, "weight" (normalised per-sample
        weight) and, with PAD (else None), "variance" and "log_variance" (mean σ² and mean ln σ² of
        each sample over its elements), "effective_weight" (`PADWeighting.parts`) and "gap_sum" (the
        gap summed over elements, ‖s − t‖² for l2, whatever PAD's dim_reduce)."""
        if self._last is None:
            raise RuntimeError("per_sample_stats: run a forward pass first")
        d, w, logvars, d_sum = self._last
        out: dict[str, torch.Tensor | None] = {"gap": d, "weight": w, "variance": None, "log_variance": None}
        out["gap_sum"] = d_sum
        out["effective_weight"] = None
        if logvars:
            out["variance"] = torch.stack([lv.exp().mean(dim=1) for lv in logvars]).mean(dim=0)
            out["log_variance"] = torch.stack([lv.mean(dim=1) for lv in logvars]).mean(dim=0)
            out["effective_weight"] = getattr(self.weighting, "parts", {}).get("effective_weight")
        return out

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}, weighting={self.weighting_name}, lam={self.lam}, normalize={self.normalize}"
