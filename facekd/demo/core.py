"""The `facekd demo` framework: an experiment registry, a shared context, a results store, a report.

An experiment is one `Experiment(name, tier, run, report)` entry. `run(ctx)` does the work through
the `DemoContext` (which trains and caches the teacher, its EmbeddingCache, students and
evaluations, so experiments share runs) and returns a JSON-able dict; `report(ctx, result)` turns
that dict into a markdown section. Results are stored in `<run_dir>/experiments/<name>.json`, so an
interrupted demo resumes where it stopped and a re-run only rewrites the report.

Tiers are nested: "quick" ⊂ "default" ⊂ "full". An experiment registered with tier "default" runs
in the default and full demos; one with tier "full" only in the full demo.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from facekd.models import embedding_dim
from facekd.utils import atomic_path, save_json, seed_everything

Tier = Literal["quick", "default", "full"]
TIERS: tuple[str, ...] = ("quick", "default", "full")
FARS = (1e-2, 1e-3, 1e-4)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One demo experiment.

    name: unique id, also the file name of its stored result (e.g. "spine.kd_baseline").
    tier: the smallest demo tier that runs it ("quick" runs everywhere, "full" only in --full).
    run: ctx → JSON-able dict (numbers, lists, dicts, strings).
    report: (ctx, result) → markdown (the body of its section in report.md).
    title: section heading (default: name). order: position in the report (smaller first).
    """

    name: str
    tier: Tier
    run: Callable[[DemoContext], dict]
    report: Callable[[DemoContext, dict], str]
    title: str = ""
    order: int = 100


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment to the registry (ValueError on a duplicate name or an unknown tier)."""
    if experiment.tier not in TIERS:
        raise ValueError(f"experiment {experiment.name!r}: tier must be one of {TIERS}, got {experiment.tier!r}")
    if experiment.name in EXPERIMENTS:
        raise ValueError(f"experiment {experiment.name!r} is already registered")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def experiments_for(tier: str, only: Sequence[str] | None = None) -> list[Experiment]:
    """Registered experiments that a `tier` demo runs (all tiers ≤ it), in report order.

    `only` restricts to names (or name prefixes such as "spine"); unknown names are an error.
    """
    if tier not in TIERS:
        raise ValueError(f"unknown demo tier {tier!r}; expected one of {TIERS}")
    level = TIERS.index(tier)
    chosen = [e for e in EXPERIMENTS.values() if TIERS.index(e.tier) <= level]
    if only:
        for name in only:
            if not any(e.name == name or e.name.startswith(name + ".") for e in EXPERIMENTS.values()):
                raise ValueError(f"unknown experiment {name!r}; registered: {', '.join(sorted(EXPERIMENTS))}")
        chosen = [e for e in chosen if any(e.name == n or e.name.startswith(n + ".") for n in only)]
    return sorted(chosen, key=lambda e: (e.order, e.name))


# --------------------------------------------------------------------------------------------
# settings per tier
# --------------------------------------------------------------------------------------------


class NetSettings(BaseModel):
    """A network and how long / how it is trained in the demo."""

    model_config = ConfigDict(extra="forbid")
    arch: str
    embedding_size: int = 128
    epochs: int = Field(ge=1)
    batch_size: int = 64
    lr: float = 0.1
    warmup_epochs: float = 0.5
    hflip: bool = False


class DemoSettings(BaseModel):
    """Everything a demo tier depends on; written to `<run_dir>/config.yaml`.

    data: overrides of `SynthFacesConfig.preset(data_preset)`.
    kd_lambda: reference λ scale other experiments multiply their own factors by (default 1).
    kd_baseline_lambda: λ of the spine's baseline KD (ArcFace + λ·L2 on normalised embeddings). The
        paper gives no value; 20 was the best of {1, 5, 20, 50} on the default tier (seeds 0-1,
        TAR@1e-2/1e-3): ArcFace's s=64 logits give the classification loss a gradient scale that
        λ=1 cannot match.
    eval_flip: flip-sum test embeddings (insightface's protocol) when evaluating.
    threads: torch CPU threads (default 1: on a 2-core machine a second intra-op thread gains little
        for these small nets, and when anything else uses a core it makes training up to 100× slower
        (measured 752 vs 8 img/s for mbf_tiny); None: torch's default). `facekd demo --threads N`.
    """

    model_config = ConfigDict(extra="forbid")
    tier: Tier
    seeds: list[int]
    data_preset: Tier
    data: dict[str, Any] = Field(default_factory=dict)
    teacher: NetSettings
    student: NetSettings
    kd_lambda: float = 1.0
    kd_baseline_lambda: float = 20.0
    eval_flip: bool = True
    threads: int | None = 1

    def digest(self) -> str:
        """Hash of the settings that define results (threads excluded)."""
        return hashlib.sha256(self.model_dump_json(exclude={"threads"}).encode()).hexdigest()[:16]


def tier_settings(tier: str, seeds: Sequence[int] | None = None) -> DemoSettings:
    """The demo's settings for `tier` (times measured on 2 CPU cores, see docs/training.md)."""
    presets: dict[str, dict] = {
        "quick": dict(
            seeds=[0],
            data_preset="quick",
            data={},
            teacher=dict(arch="iresnet_tiny", epochs=16, batch_size=32, lr=0.1),
            student=dict(arch="mbf_tiny", epochs=10, batch_size=32, lr=0.1),
        ),
        "default": dict(
            seeds=[0, 1],
            data_preset="default",
            data=dict(num_train_identities=200),
            teacher=dict(arch="iresnet_tiny", epochs=8, batch_size=64, lr=0.1),
            student=dict(arch="mbf_tiny", epochs=5, batch_size=64, lr=0.1),
        ),
        # Every experiment, three seeds, on the default tier's data and networks: a full run in the
        # default run directory (`--out runs/demo/default`) reuses the default demo's teacher and
        # students instead of training them again.
        "full": dict(
            seeds=[0, 1, 2],
            data_preset="default",
            data=dict(num_train_identities=200),
            teacher=dict(arch="iresnet_tiny", epochs=8, batch_size=64, lr=0.1),
            student=dict(arch="mbf_tiny", epochs=5, batch_size=64, lr=0.1),
        ),
    }
    if tier not in presets:
        raise ValueError(f"unknown demo tier {tier!r}; expected one of {TIERS}")
    s = presets[tier]
    if seeds is not None:
        s = {**s, "seeds": list(seeds)}
    return DemoSettings(tier=tier, **s)


# --------------------------------------------------------------------------------------------
# the context
# --------------------------------------------------------------------------------------------


def _spec_digest(obj) -> Any:
    """JSON-able stand-in for a run spec value (arrays by content hash, callables by name)."""
    if isinstance(obj, np.ndarray):
        return "sha256:" + hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()[:16]
    if isinstance(obj, dict):
        return {k: _spec_digest(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_spec_digest(v) for v in obj]
    if callable(obj):
        return f"callable:{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return obj


class DemoContext:
    """What experiments use. Everything expensive is cached on disk under `run_dir` and reused.

    run_dir/data/        SynthFaces arrays          run_dir/teacher/      teacher run + cache_train/
    run_dir/students/<key>/seed<k>/   student runs  run_dir/eval/<name>/  test embeddings + result
    run_dir/experiments/<name>.json   results      run_dir/report.md, config.yaml, *.png
    """

    def __init__(self, run_dir: str | Path, settings: DemoSettings, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.tier = settings.tier
        self.seeds = list(settings.seeds)
        self.progress = progress
        self._teacher: nn.Module | None = None
        self._teacher_head: nn.Module | None = None
        self._evals: dict[str, dict] = {}
        if settings.threads:
            torch.set_num_threads(settings.threads)

    # ---- paths and logging
    def path(self, *parts: str) -> Path:
        """`run_dir/parts...` with its parent directory created."""
        p = self.run_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def log(self, msg: str) -> None:
        print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # ---- data
    @cached_property
    def data(self):
        """SynthFaces for this tier (`.train`, `.test`, `.pairs`), rendered once, cached on disk."""
        from facekd.synthfaces import SynthFacesConfig, make_synthfaces

        cfg = SynthFacesConfig.preset(self.settings.data_preset, **self.settings.data)
        self.log(f"SynthFaces ({self.settings.data_preset}, {cfg.fingerprint()})")
        return make_synthfaces(cfg, cache_dir=self.run_dir / "data")

    # ---- generic training
    def train_task(
        self,
        key: str,
        build: Callable[[], nn.Module],
        spec: dict,
        net: NetSettings,
        seed: int,
        dataset=None,
        sampler=None,
        epochs: int | None = None,
        train_overrides: dict | None = None,
    ) -> nn.Module:
        """Train the task made by `build()` (called after seeding with `seed`) in `run_dir/key`.

        `spec` describes everything that defines the run (JSON-able; arrays / callables are
        digested); it is stored as spec.json and a finished run with the same spec is reused, a run
        directory with a different spec is refused. Returns the trained task (eval mode).
        """
        from facekd.train import TrainConfig, train

        run = self.run_dir / key
        cfg = TrainConfig(
            epochs=epochs or net.epochs,
            batch_size=net.batch_size,
            lr=net.lr,
            warmup_epochs=net.warmup_epochs,
            seed=seed,
            log_every=10,
            **(train_overrides or {}),
        )
        full_spec = _spec_digest({**spec, "net": net.model_dump(), "train": cfg.model_dump(mode="json")})
        spec_path = run / "spec.json"
        if spec_path.exists():
            saved = json.loads(spec_path.read_text())
            if saved != full_spec:
                diff = sorted(k for k in set(saved) | set(full_spec) if saved.get(k) != full_spec.get(k))
                raise ValueError(
                    f"{run} holds a run with a different spec (differs in {diff}); "
                    "delete that directory or use another key"
                )
        else:
            save_json(spec_path, full_spec)
        seed_everything(seed)
        task = build()
        if not (run / "done").exists():
            self.log(f"training {key} ({cfg.epochs} epochs)")
        return train(
            task, dataset if dataset is not None else self.data.train, cfg, run, sampler=sampler, progress=self.progress
        )

    # ---- teacher
    def teacher(self) -> nn.Module:
        """The demo teacher (iresnet_tiny + ArcFace on SynthFaces train), trained once, eval mode."""
        if self._teacher is None:
            from facekd.models import get_model
            from facekd.models.heads import get_head
            from facekd.tasks import FaceTask

            net = self.settings.teacher
            data = self.data.train.with_augmentation({"hflip": True}) if net.hflip else self.data.train

            def build():
                return FaceTask(
                    get_model(net.arch, embedding_size=net.embedding_size, input_size=data.image_size),
                    head=get_head("arcface", net.embedding_size, data.num_classes),
                )

            task = self.train_task("teacher", build, {"kind": "teacher", "head": "arcface"}, net, seed=0, dataset=data)
            self._teacher = task.student.eval()
            self._teacher_head = task.head.eval()
        return self._teacher

    def teacher_cache(self):
        """EmbeddingCache of the teacher on the training set (normalised, no flip)."""
        from facekd.embed import embed_dataset

        return embed_dataset(
            self.teacher(), self.data.train, self.run_dir / "teacher" / "cache_train", progress=self.progress
        )

    # ---- students
    def train_student(
        self,
        key: str,
        seed: int,
        arch: str | None = None,
        head: str | None = "arcface",
        cls_loss: str = "ce",
        distill: dict | None = None,
        teacher: Any = "cache",
        sampler=None,
        epochs: int | None = None,
        train_overrides: dict | None = None,
        head_options: dict | None = None,
        cls_loss_options: dict | None = None,
        embedding_size: int | None = None,
        dataset=None,
    ) -> nn.Module:
        """Train (or reuse) a student in `run_dir/students/<key>/seed<seed>`; returns the backbone.

        head: "arcface" | "cosface" | "softmax" | None (feature-only: needs `distill`).
        cls_loss: "ce" | "focal" | "cb" | "ldam" (+ cls_loss_options; class counts are supplied).
        distill: None, or {"loss", "weighting", "lam" (or "lambda"), "options"} for `Distiller`.
        teacher: "cache" (teacher_cache(), default), "online" (the teacher run on each batch),
            "online_logits" (online, with its ArcFace head's logits, for HKD), an EmbeddingCache, or
            an nn.Module (run online).
        sampler: None (uniform shuffle), an int64 index array, or a callable epoch → indices.
        """
        from facekd.embed import EmbeddingCache
        from facekd.models import get_model
        from facekd.models.heads import get_head
        from facekd.tasks import CachedTeacher, FaceTask, OnlineTeacher

        net = self.settings.student
        if arch is not None or embedding_size is not None:
            net = net.model_copy(
                update={k: v for k, v in (("arch", arch), ("embedding_size", embedding_size)) if v is not None}
            )
        data = dataset if dataset is not None else self.data.train
        provider_spec: Any = None
        if distill is not None:
            if isinstance(teacher, str) and teacher == "cache":
                provider_spec = "teacher_cache"
            elif isinstance(teacher, str) and teacher in ("online", "online_logits"):
                provider_spec = f"teacher_{teacher}"
            elif isinstance(teacher, EmbeddingCache):
                provider_spec = {"cache": str(teacher.directory), "model": teacher.meta.get("model_sha256")}
            elif isinstance(teacher, nn.Module):
                from facekd.embed import model_checksum

                provider_spec = {"online": model_checksum(teacher)}
            else:
                raise ValueError(
                    f"train_student: teacher must be 'cache', 'online', an EmbeddingCache or a model, got {teacher!r}"
                )
        spec = {
            "kind": "student",
            "head": head,
            "head_options": head_options,
            "cls_loss": cls_loss,
            "cls_loss_options": cls_loss_options,
            "distill": distill,
            "teacher": provider_spec,
            "sampler": sampler,
            "dataset": str(data.fingerprint()),
        }

        def build():
            from facekd.losses.classification import get_cls_loss
            from facekd.losses.distiller import Distiller

            student = get_model(net.arch, embedding_size=net.embedding_size, input_size=data.image_size)
            h = loss_fn = distiller = provider = None
            if head is not None:
                h = get_head(head, net.embedding_size, data.num_classes, **(head_options or {}))
                counts = np.bincount(data.labels, minlength=data.num_classes)
                opts = dict(cls_loss_options or {})
                if cls_loss in ("cb", "ldam"):
                    opts["class_counts"] = counts
                loss_fn = get_cls_loss(cls_loss, **opts)
            if distill is not None:
                if teacher == "cache":
                    provider = CachedTeacher(self.teacher_cache())
                elif teacher in ("online", "online_logits"):
                    t = self.teacher()
                    provider = OnlineTeacher(t, head=self._teacher_head if teacher == "online_logits" else None)
                elif isinstance(teacher, EmbeddingCache):
                    provider = CachedTeacher(teacher)
                else:
                    provider = OnlineTeacher(teacher)
                t_dim = (
                    provider.dim
                    if isinstance(provider, CachedTeacher)
                    else embedding_dim(provider.model, data.image_size)
                )
                distiller = Distiller.from_config(
                    dict(distill),
                    student_dim=net.embedding_size,
                    teacher_dim=t_dim,
                    student=student,
                    teacher=provider.model if isinstance(provider, OnlineTeacher) else None,
                    input_size=data.image_size,
                )
            return FaceTask(student, head=h, cls_loss=loss_fn, distiller=distiller, teacher=provider)

        task = self.train_task(
            f"students/{key}/seed{seed}",
            build,
            spec,
            net,
            seed,
            dataset=data,
            sampler=sampler,
            epochs=epochs,
            train_overrides=train_overrides,
        )
        return task.student.eval()

    # ---- evaluation
    def evaluate(self, model: nn.Module, name: str) -> dict:
        """Verification on the SynthFaces test pairs: `facekd.evaluate.verification.evaluate_pairs`
        (strict TAR@FAR 1e-2/1e-3/1e-4, insightface TAR, 10-fold accuracy, hard pairs, per group).

        Test embeddings are cached in `run_dir/eval/<name>/` (refused if the model changed).
        """
        from facekd.embed import embed_dataset
        from facekd.evaluate.verification import evaluate_pairs

        cache = embed_dataset(
            model, self.data.test, self.run_dir / "eval" / name, flip=self.settings.eval_flip, progress=self.progress
        )
        key = cache.meta["model_sha256"]
        if self._evals.get(name, {}).get("_model") != key:
            result = evaluate_pairs(
                np.asarray(cache.embeddings), self.data.pairs, groups=self.data.test.groups, fars=FARS
            )
            self._evals[name] = {"_model": key, "result": result}
        return self._evals[name]["result"]

    def scores(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(cosine scores (P,), issame (P,)) of an evaluated model on the test pairs (for ROC plots)."""
        from facekd.embed import EmbeddingCache

        e = np.asarray(EmbeddingCache.open(self.run_dir / "eval" / name).embeddings)
        p = self.data.pairs
        return np.einsum("ij,ij->i", e[p.a], e[p.b]), np.asarray(p.issame, bool)

    def plot_roc(self, curves: dict[str, str], filename: str, title: str = "ROC") -> str:
        """Plot ROC curves {label: evaluated name} to run_dir/filename; returns the relative path."""
        from facekd.evaluate.verification import plot_roc

        plot_roc({label: self.scores(name) for label, name in curves.items()}, self.path(filename), title=title)
        return filename


# --------------------------------------------------------------------------------------------
# report helpers (shared by every paper's experiments)
# --------------------------------------------------------------------------------------------


def headline(ev: dict) -> dict[str, float]:
    """{"TAR@1e-02": …, "TAR@1e-03": …, "TAR@1e-04": …, "accuracy": …} from an evaluate() dict."""
    out = {f"TAR@{t['far']:.0e}": float(t["tar"]) for t in ev["tar_at_far"]}
    out["accuracy"] = float(ev["accuracy"]["mean"])
    return out


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """'0.8123 ± 0.0100' (population std over seeds; a single value prints alone)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def metrics_table(rows: dict[str, list[dict]], columns: Sequence[str] | None = None) -> str:
    """Markdown table: one row per method, cells mean ± std over its list of evaluate() dicts.

    columns: keys of `headline()` (default: all TAR@FAR and accuracy). A row's header notes n seeds.
    """
    heads = {name: [headline(ev) for ev in evs] for name, evs in rows.items()}
    columns = list(columns or next(iter(heads.values()))[0].keys())
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, hs in heads.items():
        n = f" (n={len(hs)})" if len(hs) > 1 else ""
        lines.append(f"| {name}{n} | " + " | ".join(mean_std([h[c] for h in hs]) for c in columns) + " |")
    return "\n".join(lines)


def group_table(rows: dict[str, list[dict]], far: float = 1e-3) -> str:
    """Markdown table of per-demographic-group TAR at the global strict threshold for `far`."""
    groups = sorted({g for evs in rows.values() for ev in evs for g in ev.get("groups", {})}, key=int)
    lines = ["| method | " + " | ".join(f"group {g}" for g in groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for name, evs in rows.items():
        cells = []
        for g in groups:
            vals = [
                t["tar"]
                for ev in evs
                for t in ev["groups"].get(g, {}).get("at_global_threshold", [])
                if math.isclose(t["far"], far)
            ]
            cells.append(mean_std(vals, 3))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# running a demo
# --------------------------------------------------------------------------------------------


def code_digest(exp: Experiment) -> str:
    """sha256 (16 hex) of the source file that defines `exp.run`: a stored result is reused only
    while its settings and this file are unchanged (its trained models are reused by spec anyway)."""
    return hashlib.sha256(Path(inspect.getsourcefile(exp.run)).read_bytes()).hexdigest()[:16]


def run_demo(
    tier: str = "default",
    out: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    settings: DemoSettings | None = None,
) -> Path:
    """Run every experiment of `tier` (reusing stored results, see `code_digest`) and write the report.

    out: run directory (default runs/demo/<tier>). Returns the path of report.md.
    """
    t0 = time.perf_counter()
    settings = settings or tier_settings(tier, seeds)
    run_dir = Path(out) if out is not None else Path("runs") / "demo" / tier
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(json.loads(settings.model_dump_json()), sort_keys=False))
    ctx = DemoContext(run_dir, settings, progress=progress)
    chosen = experiments_for(settings.tier, only)
    if not chosen:
        raise ValueError(f"no experiment registered for tier {settings.tier!r}")
    results: dict[str, tuple[dict, float]] = {}
    for exp in chosen:
        store = run_dir / "experiments" / f"{exp.name}.json"
        if store.exists():
            saved = json.loads(store.read_text())
            if saved.get("settings") == settings.digest() and saved.get("code") == code_digest(exp):
                ctx.log(f"{exp.name}: stored result reused")
                results[exp.name] = (saved["result"], saved["wall_s"])
                continue
        ctx.log(f"{exp.name}: running")
        t = time.perf_counter()
        result = exp.run(ctx)
        wall = time.perf_counter() - t
        save_json(
            store,
            {
                "name": exp.name,
                "settings": settings.digest(),
                "code": code_digest(exp),
                "wall_s": wall,
                "result": result,
            },
        )
        results[exp.name] = (json.loads(json.dumps(result, default=str)), wall)
        ctx.log(f"{exp.name}: done in {wall:.1f} s")
    wall_total = time.perf_counter() - t0
    report = write_report(ctx, chosen, results, wall_total)
    ctx.log(f"report: {report}  (wall time {wall_total:.1f} s)")
    return report


def write_report(
    ctx: DemoContext, chosen: list[Experiment], results: dict[str, tuple[dict, float]], wall_total: float
) -> Path:
    """report.md: header (tier, seeds, wall time, config), then one section per experiment."""
    s = ctx.settings
    parts = [
        f"# facekd demo — tier `{s.tier}`",
        "",
        f"Seeds: {s.seeds} · wall time of this invocation: {wall_total:.1f} s "
        f"(stored results are reused) · threads: {torch.get_num_threads()} · settings: [config.yaml](config.yaml)",
        "",
        f"Data: SynthFaces preset `{s.data_preset}` with overrides {s.data or '{}'}; "
        f"teacher `{s.teacher.arch}` ({s.teacher.epochs} epochs), student `{s.student.arch}` ({s.student.epochs} epochs). "
        "TAR@FAR uses the strict convention (FAR ≤ target); accuracy is insightface's 10-fold protocol.",
    ]
    for exp in chosen:
        result, wall = results[exp.name]
        parts += [
            "",
            f"## {exp.title or exp.name}",
            "",
            exp.report(ctx, result).strip(),
            "",
            f"_experiment `{exp.name}`, run time {wall:.1f} s_",
        ]
    path = ctx.run_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts) + "\n")
    return path


__all__ = [
    "EXPERIMENTS",
    "FARS",
    "DemoContext",
    "DemoSettings",
    "Experiment",
    "NetSettings",
    "experiments_for",
    "group_table",
    "headline",
    "mean_std",
    "metrics_table",
    "register",
    "run_demo",
    "tier_settings",
    "write_report",
]
