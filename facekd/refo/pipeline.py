"""ReFO / ReFO+: reverse distillation and feature-only students (Algorithm 1 of "Rethinking
Feature-based Knowledge Distillation for Face Recognition"; only its supplementary is public).

The five steps, each a *stage*; the trained ones are `facekd.config.RunConfig`s (built by
`proxy_config`, `reverse_config`, `student_config`) run through `run_training`:

1. ``proxy``          train a proxy s′ with the student's architecture on D1 with L_cls (ReFO).
                      ReFO+ (our reading, the paper's text for it is not public): s′ is *distilled
                      from the original teacher*, L_cls + λ_p · L_emb(f_s′, f_t) (`proxy_lambda`),
                      the original teacher's D1 embeddings coming from stage ``original_embed``.
2. ``proxy_embed``    embed D1 with s′ (EmbeddingCache).
3. ``reverse``        reverse distillation: train the *teacher* with L_cls + β1 · L_emb(f_t, f_s′)
                      (supplementary Eq. 4). The teacher is the model being trained, the target is
                      the proxy's cached embedding; when their sizes differ a linear projection
                      (inside the Distiller, training only) maps the teacher's embedding to the
                      proxy's size. β1 defaults to 0.5 with normalised embeddings, 0.001 without.
4. ``teacher_embed``  embed the distillation data D2 with the tailored teacher (labels unused).
5. ``student``        feature-only distillation: the student is trained with β2 · L_emb(f_s, f_t)
                      only (Eq. 5, β2 = 5): no labels, no margin head, no class centres.

Stages are content-addressed (`facekd.refo.stages.StageStore`): a stage's directory is named by
the digest of everything it depends on, upstream stages included, so a re-run reuses every
finished stage, a changed setting runs only the stages it changes (a new β2: the student alone),
and pipelines that share a store share their common stages. A stage killed mid-way resumes from
its own checkpoint, so a killed `facekd refo` continues in the stage it was in. The embed stages
read the datasets without augmentation, since targets are looked up by row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from facekd import dist
from facekd.config import DataConfig, DistillConfig, RunConfig, TeacherConfig, build_dataset
from facekd.dist import resolve_device
from facekd.embed import EmbeddingCache
from facekd.models import get_model
from facekd.models.checkpoint import load_backbone
from facekd.refo.config import RefoConfig
from facekd.refo.stages import StageStore, TrainedRun, state_of
from facekd.utils import save_json

STAGES = ("original_embed", "proxy", "proxy_embed", "reverse", "teacher_embed", "student")


# --------------------------------------------------------------------------------------------
# The trained stages as run configs
# --------------------------------------------------------------------------------------------


def _embedding_loss(cfg: RefoConfig, lam: float) -> DistillConfig:
    """λ · L_emb(f_trained, f_target) (a projection is added by the Distiller when sizes differ)."""
    return DistillConfig.model_validate(
        {"loss": cfg.emb_loss, "weighting": "uniform", "lambda": lam, "normalize": cfg.normalize}
    )


def proxy_config(cfg: RefoConfig, data: DataConfig, original_cache: EmbeddingCache | None = None) -> RunConfig:
    """Step 1: s′ with L_cls on D1; ReFO+ adds proxy_lambda · L_emb to the original teacher's cache."""
    distill = teacher = None
    if original_cache is not None:
        distill = _embedding_loss(cfg, cfg.proxy_lambda)
        teacher = TeacherConfig(cache=original_cache.directory)
    return RunConfig(
        data=data,
        model=cfg.proxy_model,
        head=cfg.head,
        cls_loss=cfg.cls_loss,
        distill=distill,
        teacher=teacher,
        train=cfg.proxy_train,
    )


def reverse_config(cfg: RefoConfig, data: DataConfig, proxy_cache: EmbeddingCache) -> RunConfig:
    """Step 3: the teacher with L_cls + β1 · L_emb(f_t, f_s′) on D1 (supplementary Eq. 4), from
    random weights or (teacher_init "original") from the original teacher's."""
    init = cfg.original_checkpoint if cfg.teacher_init == "original" else None
    return RunConfig(
        data=data,
        model=cfg.teacher.model_copy(update={"init": init}),
        head=cfg.head,
        cls_loss=cfg.cls_loss,
        distill=_embedding_loss(cfg, cfg.beta1_value),
        teacher=TeacherConfig(cache=proxy_cache.directory),
        train=cfg.teacher_train,
    )


def student_config(cfg: RefoConfig, distill_data: DataConfig, teacher_cache: EmbeddingCache) -> RunConfig:
    """Step 5: the feature-only student, β2 · L_emb(f_s, f_t) on D2: no head, labels never read (Eq. 5)."""
    return RunConfig(
        data=distill_data,
        model=cfg.student,
        head=None,
        distill=_embedding_loss(cfg, cfg.beta2),
        teacher=TeacherConfig(cache=teacher_cache.directory),
        train=cfg.student_train,
    )


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class RefoResult:
    """The trained stages (`.model` is the backbone), the embed stages' caches, and one record per
    stage ({"stage", "state", "dir", "seconds"}; state: "done" when it was reused)."""

    run_dir: Path
    proxy: TrainedRun
    tailored_teacher: TrainedRun
    student: TrainedRun
    proxy_cache: EmbeddingCache
    teacher_cache: EmbeddingCache
    original_cache: EmbeddingCache | None
    stages: dict[str, dict]


class _Stages:
    """Runs stages through the store, logs each one's state and records where it left its result."""

    def __init__(self, store: StageStore, run_dir: Path, cfg: RefoConfig, log: Callable[[str], None]):
        self.store, self.run_dir, self.cfg, self.log = store, run_dir, cfg, log
        self.device = resolve_device(cfg.teacher_train.device)
        self.records: dict[str, dict] = {}

    def _begin(self, name: str, state: str, directory: Path) -> float:
        number = STAGES.index(name)
        if state == "done":
            self.log(f"[refo] stage {number} {name}: done, reused")
        else:
            self.log(f"[refo] stage {number} {name}: {'resuming' if state == 'partial' else 'starting'}")
            save_json(self.run_dir / "progress.json", {"stage": name, "dir": str(directory)})
        return time.perf_counter()

    def _end(self, name: str, state: str, directory: Path, t0: float) -> None:
        seconds = round(time.perf_counter() - t0, 2)
        self.records[name] = {"stage": name, "state": state, "dir": str(directory), "seconds": seconds}
        save_json(self.run_dir / "stages.json", self.records)

    def train(self, name: str, run_cfg: RunConfig) -> TrainedRun:
        state = self.store.run_state(run_cfg)
        t0 = self._begin(name, state, self.store.run_dir(run_cfg))
        run = self.store.train(run_cfg)
        self._end(name, state, run.directory, t0)
        return run

    def embed(self, name: str, model: nn.Module, dataset) -> EmbeddingCache:
        model = model.to(self.device)
        rows = dataset.without_augmentation()
        directory = self.store.cache_dir(model, rows, self.cfg.flip, self.cfg.normalize)
        state = state_of(directory)
        t0 = self._begin(name, state, directory)
        cache = self.store.embed(
            model, rows, flip=self.cfg.flip, normalize=self.cfg.normalize, batch_size=self.cfg.embed_batch_size
        )
        self._end(name, state, cache.directory, t0)
        return cache


def _original_teacher(cfg: RefoConfig, input_size) -> nn.Module:
    """The original teacher (ReFO+) loaded from `original_checkpoint`, in eval mode."""
    spec = cfg.original_teacher
    assert spec is not None and cfg.original_checkpoint is not None  # checked by RefoConfig
    if not Path(cfg.original_checkpoint).is_file():
        raise FileNotFoundError(f"original teacher checkpoint {cfg.original_checkpoint} does not exist")
    model = get_model(spec.arch, embedding_size=spec.embedding_size, input_size=spec.input_size or input_size)
    return load_backbone(cfg.original_checkpoint, model)


def run_refo(
    cfg: RefoConfig,
    run_dir: str | Path,
    data: DataConfig,
    distill_data: DataConfig | None = None,
    *,
    store: StageStore | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RefoResult:
    """Run (or resume) Algorithm 1; return its trained stages and caches.

    data: D1, labelled (proxy and reverse distillation). distill_data: D2 for the feature-only
    student (labels never read); default D1. store: where stages live (default `run_dir` itself:
    `run_dir/runs/<digest>`, `run_dir/caches/<digest>`); `run_dir` gets refo_config.json,
    stages.json (stage → its directory) and progress.json (the stage in progress).
    """
    dist.init_from_env()  # before any stage: the embed stages shard across torchrun ranks too
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    distill_data = data if distill_data is None else distill_data
    d1, d2 = build_dataset(data), build_dataset(distill_data)
    if d1.image_size != d2.image_size:
        raise ValueError(
            f"D1 images are {d1.image_size} px, D2 images {d2.image_size} px: "
            "the student and teacher need one input size"
        )
    save_json(run_dir / "refo_config.json", cfg.model_dump(mode="json"))
    stages = _Stages(store or StageStore(run_dir, progress), run_dir, cfg, log)
    original = None
    if cfg.variant == "refo_plus":
        original = stages.embed("original_embed", _original_teacher(cfg, d1.image_size), d1)
    proxy = stages.train("proxy", proxy_config(cfg, data, original))
    proxy_cache = stages.embed("proxy_embed", proxy.model, d1)
    tailored = stages.train("reverse", reverse_config(cfg, data, proxy_cache))
    teacher_cache = stages.embed("teacher_embed", tailored.model, d2)
    student = stages.train("student", student_config(cfg, distill_data, teacher_cache))
    save_json(run_dir / "progress.json", {"stage": "finished"})
    log(f"[refo] finished: {run_dir}")
    return RefoResult(run_dir, proxy, tailored, student, proxy_cache, teacher_cache, original, dict(stages.records))


__all__ = ["STAGES", "RefoResult", "proxy_config", "reverse_config", "run_refo", "student_config"]
