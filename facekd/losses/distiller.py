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
from facekd.losses.weighting import WEIGHTINGS, Term, Weighting, get_weighting, warmup_factor

__all__ = ["LOSSES", "Distiller", "Features", "probe_feature_shapes"]

# Options the Distiller itself takes: the warm-up, and the context a loss may need (stage-map shapes,
# class count, the teacher's class centres), which `from_config` can fill in from the networks.
DISTILLER_OPTIONS = ("warmup_steps", "student_shapes", "teacher_shapes", "num_classes", "class_centres")


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
            (dim_reduce "sum" / "mean", detach_weights, T, alpha, fraction, and PAD's sigma, detach,
            init_logvar, l2_stage_steps, var_eps), and the Distiller's own:
            warmup_steps: λ ramps linearly from 0 to λ over this many steps (default 0 = off;
                required > 0 with weighting "warmup").
            student_shapes / teacher_shapes: (C, H, W) of every stage map; needed by fitnet and by
                PAD on maps (`from_config` probes them from the models).
            num_classes / class_centres: the class count and the teacher's (C, d) class centres
                (tensor or file), for the losses that live in a margin head.

    The variance branch's gradient is divided by λ·warmup(step): λ balances distillation against
    the task for the student only, and the branch (trained by this loss alone) keeps a λ-free
    learning rate (with λ = 50, an undivided branch diverged in the demo).

    After a forward, `per_sample_stats` gives detached (B,) tensors: "gap" (d_i), "weight" (the
    normalised weight of each sample) and, with PAD, "variance" (mean σ² of the sample).
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
        ctx.pad = self._pad = self.weighting.variance_branches(self.var_branches)
        self.is_pad = ctx.pad is not None
        self.loss = loss_cls(parse_options(loss_cls.Options, loss_opts, f"distillation loss {loss!r}"), ctx)
        self.projection = projection

    @property
    def needs_maps(self) -> bool:
        """True when the loss reads stage feature maps (the task must run return_features=True)."""
        return self.loss.reads == "maps"

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
        the shapes are probed by a dummy forward of `student` and `teacher` at `input_size`.
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
        loss_cls, w_cls = LOSSES.get(loss), WEIGHTINGS.get(weighting)
        needs_shapes = loss_cls is not None and loss_cls.requires_shapes(w_cls is not None and w_cls.uses_variance)
        if needs_shapes and ("student_shapes" not in options or "teacher_shapes" not in options):
            if student is None or teacher is None or input_size is None:
                raise ValueError(
                    f"distill loss {loss!r}: give options student_shapes/teacher_shapes, "
                    "or student, teacher and input_size to probe them"
                )
            options.setdefault("student_shapes", probe_feature_shapes(student, input_size, in_channels))
            options.setdefault("teacher_shapes", probe_feature_shapes(teacher, input_size, in_channels))
        context = {"num_classes": num_classes, "class_centres": class_centres}
        for key, value in context.items():
            if value is not None:
                options.setdefault(key, value)
        return cls(
            loss=loss,
            weighting=weighting,
            lam=cfg.get("lambda", cfg.get("lam", 1.0)),
            student_dim=student_dim,
            teacher_dim=teacher_dim,
            normalize=cfg.get("normalize", True),
            **options,
        )

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
        terms = self._terms(student, teacher, mask)
        factor = self.lam * warmup_factor(step, self.warmup_steps)
        if self._pad is not None and factor > 0:
            # λ weighs the distillation against the task for the *student*; the variance branch is
            # trained only by this loss, so undo λ on its gradient (its learning rate stays λ-free).
            for t in terms:
                t.logvar = scale_grad(t.logvar, 1.0 / factor) if t.logvar is not None else None
        loss, w, d = self.weighting(terms, step)
        stats = [loss.detach(), d.mean()]
        pad = self._pad
        log_vars = [pad.log_variance(t.logvar.detach()) for t in terms if t.logvar is not None] if pad else []
        if log_vars:
            stats.append(torch.stack([lv.mean() for lv in log_vars]).mean())
        self._last = (d, w, log_vars)
        values = torch.stack(stats)  # logs stay on the device: the trainer reads them every log_every steps
        logs: dict[str, torch.Tensor | float] = {
            "distill/loss": values[0],
            "distill/gap": values[1],
            "distill/lambda": factor,
        }
        if log_vars:
            logs["distill/logvar"] = values[2]
        return factor * loss, logs

    @property
    def per_sample_stats(self) -> dict[str, torch.Tensor | None]:
        """Detached (B,) tensors of the last forward: "gap" d_i, "weight" (normalised per-sample
        weight) and "variance" (PAD: mean σ² of each sample over its elements; else None)."""
        if self._last is None:
            raise RuntimeError("per_sample_stats: run a forward pass first")
        d, w, logvars = self._last
        variance = torch.stack([lv.exp().mean(dim=1) for lv in logvars]).mean(dim=0) if logvars else None
        return {"gap": d, "weight": w, "variance": variance}

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}, weighting={self.weighting_name}, lam={self.lam}, normalize={self.normalize}"
