"""`Distiller`: one distillation loss + one weighting scheme + λ, as a training task holds it.

    loss = λ · warmup(step) · weighting(per-sample distillation loss)

The Distiller is an `nn.Module` that owns every parameter the distillation needs — the linear
projection when the student and teacher embedding sizes differ, FitNet's 1×1 regressors, VID's
regressor and variance, PAD's variance branches — so a task that holds it (and is wrapped in DDP)
trains and synchronises them. None of it is part of the student: it is never exported.

Config (the `distill:` block of a training config)::

    distill: {loss: l2, weighting: pad, lambda: 1.0, options: {sigma: per_dim}}

is built with `Distiller.from_config(cfg, student_dim, teacher_dim, student=..., teacher=...)`.
See docs/distillation.md for the table of losses, weightings and options.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facekd.losses import distill as D
from facekd.losses.distill import Features
from facekd.losses.weighting import Term, get_weighting, pad_log_variance, warmup_factor
from facekd.models.variance import ConvVarianceBranch, VarianceBranch

__all__ = ["LOSSES", "Distiller", "Features", "probe_feature_shapes"]

# name → (input it reads, PAD-compatible, its own option names with defaults)
LOSSES: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "l2": ("embedding", True, {}),
    "cosine": ("embedding", False, {}),
    "hkd": ("logits", False, {"temperature": 4.0}),
    "fitnet": ("maps", True, {}),
    "at": ("maps", True, {"p": 2.0}),
    "rkd": ("embedding", False, {"w_dist": 1.0, "w_angle": 2.0}),
    "cc": ("embedding", False, {"kernel": "gaussian", "gamma": 0.4}),
    "sp": ("embedding", False, {}),
    "pkt": ("embedding", False, {}),
    "darkrank": ("embedding", False, {"rank_alpha": 3.0, "rank_beta": 3.0}),
    "vid": ("embedding", False, {"init_var": 5.0}),
}
_WEIGHTING_OPTIONS = {"T", "alpha", "fraction", "l2_stage_steps", "var_eps", "detach_weights"}
_PAD_OPTIONS = {"sigma": "per_dim", "detach": True, "init_logvar": 0.0}
_DISTILLER_OPTIONS = {"dim_reduce", "warmup_steps", "layers", "student_shapes", "teacher_shapes"}


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""
    return x * scale + x.detach() * (1.0 - scale)


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
    return [tuple(int(v) for v in m.shape[1:]) for m in out[1]]


class Distiller(nn.Module):
    """Distillation loss module: forward(student: Features, teacher: Features, step, mask=None)
    → (scalar loss, logs dict[str, float]).

    Args:
        loss: one of `LOSSES` (l2, cosine, hkd, fitnet, at, rkd, cc, sp, pkt, darkrank, vid).
        weighting: uniform, warmup, soft_exp, soft_poly, hard_mining, hard_discarding, pad.
        lam: λ of Eq. 2 (the weight of the distillation loss in the task loss).
        student_dim / teacher_dim: embedding sizes; a Linear projection (student → teacher) is added
            for l2 / cosine when they differ (FitNet-style, as PAD Sec. 3.1 says).
        normalize: L2-normalise the (projected) student and the teacher embedding before an
            embedding loss (default True: face embeddings are compared on the unit sphere).
        options (all optional):
            dim_reduce: "sum" (default; d_i = ‖f_s − y‖², the paper's Eq. 1 and 7) or "mean" (the
                PAD authors' / torchdistill code) over the elements of an elementwise loss.
            warmup_steps: λ ramps linearly from 0 to λ over this many steps (default 0 = off;
                required > 0 with weighting "warmup").
            layers: indices of the stage maps used by fitnet / at (default fitnet [-1], at all).
            student_shapes / teacher_shapes: (C, H, W) of every stage map; needed by fitnet and by
                PAD on maps (`from_config` can probe them from the models).
            PAD: sigma "per_dim" (default, as the public code) or "per_sample"; detach (default
                True: the variance branch reads a detached student output, so the student is
                trained only by the 1/σ²-weighted error — the public code does not detach, see
                docs/distillation.md for why we do); init_logvar (0.0: σ² starts near 1); l2_stage_steps (0: PAD from scratch;
                N: plain L2 for the first N steps, then PAD); var_eps (1e-6: σ² = exp(s) + var_eps).
            weighting: T (soft_exp, hard_mining), alpha (soft_poly), fraction (hard_discarding),
                detach_weights (default True).
            loss: temperature (hkd, 4), p (at, 2), w_dist / w_angle (rkd, 1 / 2), kernel / gamma (cc,
                gaussian / 0.4), rank_alpha / rank_beta (darkrank, 3 / 3), init_var (vid, 5).

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
        if loss not in LOSSES:
            raise ValueError(f"unknown distillation loss {loss!r}; expected one of {sorted(LOSSES)}")
        source, pad_ok, loss_defaults = LOSSES[loss]
        allowed = set(loss_defaults) | _WEIGHTING_OPTIONS | set(_PAD_OPTIONS) | _DISTILLER_OPTIONS
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(
                f"distiller ({loss}/{weighting}): unknown options {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        self.loss_name, self.weighting_name, self.source = loss, weighting, source
        self.lam = float(lam)
        self.normalize = bool(normalize)
        self.warmup_steps = int(options.get("warmup_steps", 0))
        if weighting == "warmup" and self.warmup_steps <= 0:
            raise ValueError("weighting 'warmup' needs options.warmup_steps > 0 (the ramp length in steps)")
        self.is_pad = weighting == "pad"
        if self.is_pad and not pad_ok:
            raise ValueError(f"weighting 'pad' needs an L2-form (Gaussian) loss: l2, fitnet or at, not {loss!r}")
        pad_given = set(options) & set(_PAD_OPTIONS)
        if pad_given and not self.is_pad:
            raise ValueError(f"options {sorted(pad_given)} apply only to weighting 'pad'")
        self.loss_opts = {k: options.get(k, v) for k, v in loss_defaults.items()}
        w_opts = {k: options[k] for k in _WEIGHTING_OPTIONS if k in options}
        self.weighting = get_weighting(weighting, dim_reduce=options.get("dim_reduce", "sum"), **w_opts)
        pad = {k: options.get(k, v) for k, v in _PAD_OPTIONS.items()}
        if pad["sigma"] not in ("per_dim", "per_sample"):
            raise ValueError(f"pad option sigma must be 'per_dim' or 'per_sample', got {pad['sigma']!r}")
        self.pad_detach = bool(pad["detach"])
        self._last: tuple | None = None

        self.projection: nn.Module | None = None
        self.var_branches = nn.ModuleList()
        self.hints = nn.ModuleList()
        self.vid: D.VIDLoss | None = None
        self.layers: list[int] = []
        per_dim = pad["sigma"] == "per_dim"

        if loss in ("l2", "cosine", "vid"):
            if student_dim is None or teacher_dim is None:
                raise ValueError(f"loss {loss!r} needs student_dim and teacher_dim")
            if loss == "vid":
                self.vid = D.VIDLoss(student_dim, teacher_dim, init_var=self.loss_opts["init_var"])
            elif student_dim != teacher_dim:
                self.projection = nn.Linear(student_dim, teacher_dim)
            if self.is_pad:
                self.var_branches.append(VarianceBranch(teacher_dim, teacher_dim if per_dim else 1, pad["init_logvar"]))
        elif source == "maps":
            s_shapes, t_shapes = options.get("student_shapes"), options.get("teacher_shapes")
            default_layers = [-1] if loss == "fitnet" else None
            layers = options.get("layers", default_layers)
            if loss == "fitnet" or self.is_pad:
                if s_shapes is None or t_shapes is None:
                    raise ValueError(
                        f"{loss}{' with pad' if self.is_pad else ''} needs options student_shapes and "
                        "teacher_shapes ((C, H, W) of each stage map); Distiller.from_config(..., "
                        "student=, teacher=, input_size=) probes them"
                    )
                n = len(s_shapes)
                if len(t_shapes) != n:
                    raise ValueError(f"{loss}: student has {n} stage maps, teacher {len(t_shapes)}")
                self.layers = [i % n for i in (layers if layers is not None else range(n))]
                for i in self.layers:
                    (cs, _, _), (ct, ht, wt) = s_shapes[i], t_shapes[i]
                    if loss == "fitnet":
                        self.hints.append(D.FitNetHint(cs, ct))
                        if self.is_pad:
                            self.var_branches.append(ConvVarianceBranch(ct, ct if per_dim else 1, pad["init_logvar"]))
                    else:  # at with pad: FC + BN on the attention vector (PAD Sec. 5.1)
                        self.var_branches.append(VarianceBranch(ht * wt, ht * wt if per_dim else 1, pad["init_logvar"]))
            elif layers is not None:
                self.layers = list(layers)
        self._per_dim = per_dim

    @property
    def needs_maps(self) -> bool:
        """True when the loss reads stage feature maps (the task must run return_features=True)."""
        return self.source == "maps"

    @property
    def needs_logits(self) -> bool:
        """True when the loss reads class logits (hkd)."""
        return self.source == "logits"

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
    ) -> Distiller:
        """Build from a config block ``{loss, weighting, lambda, options}`` (all but loss optional).

        For map losses (fitnet, at+pad) without student_shapes / teacher_shapes in the options,
        the shapes are probed by a dummy forward of `student` and `teacher` at `input_size`.
        """
        if not isinstance(cfg, dict):
            raise ValueError(f"distill config must be a mapping, got {type(cfg).__name__}")
        unknown = set(cfg) - {"loss", "weighting", "lambda", "lam", "options", "normalize"}
        if unknown:
            raise ValueError(
                f"distill config: unknown keys {sorted(unknown)}; expected loss, weighting, lambda, options"
            )
        options = dict(cfg.get("options") or {})
        loss = cfg.get("loss", "l2")
        needs_shapes = (
            loss in LOSSES and LOSSES[loss][0] == "maps" and (loss == "fitnet" or cfg.get("weighting") == "pad")
        )
        if needs_shapes and ("student_shapes" not in options or "teacher_shapes" not in options):
            if student is None or teacher is None or input_size is None:
                raise ValueError(
                    f"distill loss {loss!r}: give options student_shapes/teacher_shapes, or student, teacher and input_size to probe them"
                )
            options.setdefault("student_shapes", probe_feature_shapes(student, input_size, in_channels))
            options.setdefault("teacher_shapes", probe_feature_shapes(teacher, input_size, in_channels))
        return cls(
            loss=loss,
            weighting=cfg.get("weighting", "uniform"),
            lam=cfg.get("lambda", cfg.get("lam", 1.0)),
            student_dim=student_dim,
            teacher_dim=teacher_dim,
            normalize=cfg.get("normalize", True),
            **options,
        )

    # ------------------------------------------------------------------ forward
    def _branch_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach() if self.pad_detach else x

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

    def _maps(self, student: Features, teacher: Features) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if not student.maps or not teacher.maps:
            raise ValueError(
                f"loss {self.loss_name!r} needs stage feature maps from both networks "
                "(an online teacher with return_features=True; a cached teacher has only embeddings)"
            )
        if len(student.maps) != len(teacher.maps):
            raise ValueError(f"student has {len(student.maps)} stage maps, teacher {len(teacher.maps)}")
        n = len(student.maps)
        idx = [i % n for i in self.layers] if self.layers else list(range(n))
        return [student.maps[i] for i in idx], [teacher.maps[i].detach() for i in idx]

    @staticmethod
    def _layer_mask(mask: torch.Tensor | None, size, channels: int) -> torch.Tensor | None:
        """Spatial mask (B, H, W) / (B, 1, H, W) → nearest-resized, channel-broadcast, flattened."""
        if mask is None:
            return None
        m = mask[:, None] if mask.dim() == 3 else mask
        if m.dim() != 4 or m.shape[1] != 1:
            raise ValueError(f"spatial mask must be (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
        m = F.interpolate(m.float(), size=tuple(size), mode="nearest")
        return m.expand(-1, channels, -1, -1).flatten(1)

    def _terms(self, student: Features, teacher: Features, mask: torch.Tensor | None) -> list[Term]:
        name, o = self.loss_name, self.loss_opts
        if mask is not None and self.source != "maps":
            raise ValueError(f"a spatial mask applies only to feature-map losses (fitnet, at), not {name!r}")
        if name == "hkd":
            if student.logits is None or teacher.logits is None:
                raise ValueError("loss 'hkd' needs class logits in both Features (Features.logits)")
            return [Term(D.hkd_loss(student.logits, teacher.logits.detach(), o["temperature"]))]
        if self.source == "maps":
            s_maps, t_maps = self._maps(student, teacher)
            terms = []
            for k, (fs, ft) in enumerate(zip(s_maps, t_maps)):
                if name == "fitnet":
                    mu, values = self.hints[k](fs, ft)
                    m = self._layer_mask(mask, ft.shape[-2:], ft.shape[1])
                    logvar = None
                    if self.is_pad:
                        lv = self.var_branches[k](self._branch_input(mu))
                        logvar = lv.flatten(1) if self._per_dim else lv.mean(dim=(2, 3)).flatten(1)
                else:
                    fs_r = D.match_spatial(fs, ft.shape[-2:])
                    a_s = D.attention_map(fs_r, o["p"])
                    values = (a_s - D.attention_map(ft, o["p"])).pow(2)
                    m = self._layer_mask(mask, ft.shape[-2:], 1)
                    logvar = self.var_branches[k](self._branch_input(a_s)) if self.is_pad else None
                terms.append(Term(values, m, logvar))
            return terms
        s, t = self.embedding_pair(student, teacher)
        if name == "l2":
            logvar = self.var_branches[0](self._branch_input(s)) if self.is_pad else None
            return [Term(D.l2_elements(s, t), None, logvar)]
        if name == "vid":
            return [Term(self.vid(s, t))]
        fn = {
            "cosine": lambda: D.cosine_loss(s, t),
            "rkd": lambda: D.rkd_loss(s, t, o["w_dist"], o["w_angle"]),
            "cc": lambda: D.cc_loss(s, t, o["kernel"], o["gamma"]),
            "sp": lambda: D.sp_loss(s, t),
            "pkt": lambda: D.pkt_loss(s, t),
            "darkrank": lambda: D.darkrank_loss(s, t, o["rank_alpha"], o["rank_beta"]),
        }[name]
        return [Term(fn())]

    def forward(
        self, student: Features, teacher: Features, step: int = 0, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Distillation loss λ·warmup(step)·weighting(terms) and logs.

        student / teacher: `Features` of the batch (the teacher's are detached here).
        mask: optional spatial mask (B, H, W) or (B, 1, H, W) for feature-map losses (fitnet, at),
            resized to each stage by nearest neighbour: fine-grained imitation / ROI mimic.
        """
        terms = self._terms(student, teacher, mask)
        factor = self.lam * warmup_factor(step, self.warmup_steps)
        if self.is_pad and factor > 0:
            # λ weighs the distillation against the task for the *student*; the variance branch is
            # trained only by this loss, so undo λ on its gradient (its learning rate stays λ-free).
            for t in terms:
                t.logvar = _scale_grad(t.logvar, 1.0 / factor)
        loss, w, d = self.weighting(terms, step)
        stats = [loss.detach(), d.mean()]
        logvars = [pad_log_variance(t.logvar.detach(), self.weighting.var_eps) for t in terms] if self.is_pad else []
        if logvars:
            stats.append(torch.stack([lv.mean() for lv in logvars]).mean())
        self._last = (d, w, logvars)
        values = torch.stack(stats).tolist()
        logs = {"distill/loss": values[0], "distill/gap": values[1], "distill/lambda": factor}
        if logvars:
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
