"""`DemoContext`: what experiments use to train, embed and evaluate.

Every training run of the demo is a `facekd.config.RunConfig` (from `teacher_config` /
`student_config`, or a ReFO pipeline's stages) trained through `run_training` in the directory its
content digest names (`facekd.refo.stages.StageStore`), and every embedding (teacher caches, test
embeddings) is a content-addressed cache. Experiments that need the same run share it, and a run
whose settings differ in anything (a sampler's bandwidth included) gets a directory of its own.

    run_dir/data/              SynthFaces arrays
    run_dir/runs/<digest>/     training runs: teacher, students, ReFO stages
    run_dir/caches/<digest>/   embedding caches: train-set caches, test-set embeddings
    run_dir/runs.json          label → run directory (for browsing)
    run_dir/refo/<name>/       bookkeeping of each ReFO pipeline (its stages live in runs/, caches/)
    run_dir/experiments/<name>.json   results      run_dir/report.md, config.yaml, *.png
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facekd.config import DataConfig, RunConfig
from facekd.demo.report import FARS
from facekd.demo.settings import DemoSettings, NetSettings
from facekd.embed import EmbeddingCache
from facekd.refo.stages import StageStore, TrainedRun
from facekd.utils import save_json

TEACHER_SOURCES = ("cache", "online", "online_logits")


class DemoContext:
    """Runs, caches and evaluations of one demo run directory; everything expensive is reused."""

    def __init__(self, run_dir: str | Path, settings: DemoSettings, progress: bool = True, index: bool = True):
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.tier = settings.tier
        self.seeds = list(settings.seeds)
        self.progress = progress
        self.store = StageStore(self.run_dir, progress=progress)
        self._teachers: dict[int, TrainedRun] = {}
        self._evals: dict[str, dict] = {}
        path = self.run_dir / "runs.json"
        self._labels: dict[str, str] = json.loads(path.read_text()) if index and path.exists() else {}
        self._index = index
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

    def label(self, name: str, directory: str | Path) -> None:
        """Record `name` → `directory` in run_dir/runs.json (not in worker processes: index=False)."""
        if not self._index:
            return
        self._labels[name] = str(Path(directory).relative_to(self.run_dir))
        save_json(self.run_dir / "runs.json", self._labels)

    # ---- data and configs
    def data_config(self, hflip: bool = False) -> DataConfig:
        """The tier's SynthFaces training split as a run config's `data` block (the arrays are
        rendered into run_dir/data by `data` first, so that runs load them from there)."""
        _ = self.data
        return DataConfig.model_validate(
            {
                "kind": "synthfaces",
                "preset": self.settings.data_preset,
                "synthfaces": dict(self.settings.data),
                "cache_dir": self.run_dir / "data",
                "hflip": hflip,
            }
        )

    @cached_property
    def data(self):
        """SynthFaces for this tier (`.train`, `.val`, `.test` and their pairs), rendered once, cached on disk."""
        from facekd.synthfaces import SynthFacesConfig, make_synthfaces

        cfg = SynthFacesConfig.preset(self.settings.data_preset, **self.settings.data)
        self.log(f"SynthFaces ({self.settings.data_preset}, {cfg.fingerprint()})")
        return make_synthfaces(cfg, cache_dir=self.run_dir / "data")

    @staticmethod
    def model_config(net: NetSettings) -> dict:
        """`model` block of a network."""
        return {"arch": net.arch, "embedding_size": net.embedding_size}

    @staticmethod
    def train_config(net: NetSettings, seed: int) -> dict:
        """`train` block of a network's runs with `seed`."""
        return {
            "epochs": net.epochs,
            "batch_size": net.batch_size,
            "lr": net.lr,
            "warmup_epochs": net.warmup_epochs,
            "seed": seed,
            "log_every": 10,
        }

    # ---- training
    def train(self, cfg: RunConfig, label: str) -> TrainedRun:
        """Train (or reuse) the run `cfg`; `label` names it in the log and in runs.json."""
        if self.store.run_state(cfg) != "done":
            self.log(f"training {label} ({cfg.train.epochs} epochs)")
        run = self.store.train(cfg)
        self.label(label, run.directory)
        return run

    def ready(self, cfg: RunConfig) -> bool:
        """True when the run `cfg` is finished (its result can be used without training)."""
        return self.store.run_state(cfg) == "done"

    def train_many(self, runs: Sequence[tuple[RunConfig, str]], splits: Sequence[str] = ("test",)) -> list[TrainedRun]:
        """Train (or reuse) independent runs [(cfg, label)] side by side (`train_as_named`); returns
        the runs in order. A failed run raises."""
        self.train_as_named(lambda: runs, lambda _label: splits)
        return [self.train(cfg, label) for cfg, label in runs]

    def train_as_named(
        self,
        source: Callable[[], Sequence[tuple[RunConfig, str]]],
        splits: Callable[[str], Sequence[str]],
        gates: Callable[[str], bool] = lambda _label: False,
    ) -> None:
        """Train every unfinished run [(cfg, label)] that `source()` names, `settings.workers`
        processes side by side (each with `settings.threads` threads; one worker: in this process),
        and embed there the SynthFaces splits `splits(label)` of each face run. `source` is asked again whenever a
        run finishes, so runs that depend on finished ones start as soon as a process is free
        instead of after a whole batch; among the named runs the longest (most epochs) start first,
        and among equally long ones those for which `gates(label)` holds (runs whose results name
        further runs, such as a grid's).
        Returns when `source` names nothing unfinished and nothing runs. A failed run raises."""
        started: set[Path] = set()

        def pending(busy: set[Path]) -> list[tuple[RunConfig, str, Path]]:
            named: dict[Path, tuple[RunConfig, str, Path]] = {}
            for cfg, label in source():
                directory = self.store.run_dir(cfg)
                if directory in busy or directory in named or self.ready(cfg):
                    continue
                if directory in started:
                    raise RuntimeError(f"run {label} ({directory}) was trained but is still not finished")
                named[directory] = (cfg, label, directory)
            return sorted(named.values(), key=lambda job: (-job[0].train.epochs, not gates(job[1])))

        if self.settings.workers <= 1:
            while jobs := pending(set()):
                cfg, label, directory = jobs[0]
                started.add(directory)
                self.train(cfg, label)
            return
        from facekd.demo.workers import train_in_worker

        settings, workers = self.settings.model_dump_json(), self.settings.workers
        running: dict[Future, Path] = {}
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            while True:
                jobs = pending(set(running.values())) if len(running) < workers else []
                for cfg, label, directory in jobs[: workers - len(running)]:
                    self.log(f"training {label} ({cfg.train.epochs} epochs, {workers} processes)")
                    embed = tuple(splits(label)) if cfg.task == "face" and cfg.data.kind == "synthfaces" else ()
                    job = pool.submit(train_in_worker, str(self.run_dir), settings, cfg.model_dump_json(), embed)
                    running[job] = directory
                    started.add(directory)
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for job in done:
                    running.pop(job)
                    job.result()

    def teacher_config(self, seed: int | None = None) -> RunConfig:
        """A demo teacher: ArcFace on the training split (seed: default the first teacher seed)."""
        net = self.settings.teacher
        return RunConfig.model_validate(
            {
                "data": self.data_config(net.hflip),
                "model": self.model_config(net),
                "head": {"name": "arcface"},
                "train": self.train_config(net, seed=self.settings.teacher_seeds[0] if seed is None else seed),
            }
        )

    def teacher_ready(self) -> bool:
        """True when the teacher that teaches every student is trained."""
        return self.ready(self.teacher_config())

    def teacher(self, seed: int | None = None) -> TrainedRun:
        """A trained demo teacher (default: the first teacher seed, which teaches every student)."""
        seed = self.settings.teacher_seeds[0] if seed is None else seed
        if seed not in self._teachers:
            first = seed == self.settings.teacher_seeds[0]
            self._teachers[seed] = self.train(self.teacher_config(seed), "teacher" if first else f"teacher/seed{seed}")
        return self._teachers[seed]

    def teacher_cache(self) -> EmbeddingCache:
        """EmbeddingCache of the teacher on the training split (normalised, no flip)."""
        return self.store.embed(self.teacher().model, self.data.train)

    def teacher_block(self, source: str = "cache") -> dict:
        """`teacher` block: "cache" (the teacher's EmbeddingCache), "online" (its checkpoint, run on
        each batch, for feature-map losses) or "online_logits" (online with its ArcFace head, whose
        logits logit losses such as HKD read)."""
        if source == "cache":
            return {"cache": self.teacher_cache().directory}
        if source not in TEACHER_SOURCES:
            raise ValueError(f"teacher source must be one of {TEACHER_SOURCES}, got {source!r}")
        net, run = self.settings.teacher, self.teacher()
        block = {"checkpoint": run.directory / "backbone.pth", "online": True, **self.model_config(net)}
        if source == "online_logits":
            block["head"] = run.directory / "head.pth"
        return block

    def student_config(
        self,
        seed: int,
        *,
        arch: str | None = None,
        head: str | None = "arcface",
        head_options: dict | None = None,
        cls_loss: str = "ce",
        distill: dict | None = None,
        teacher: str = "cache",
        sampler: dict | None = None,
    ) -> RunConfig:
        """A student run: the tier's student network (or `arch`) trained with `seed`.

        head: "arcface" | "cosface" | "softmax" (+ head_options, e.g. {"m": 0.0}) | None
            (feature-only: needs `distill`). cls_loss: "ce" | "focal" | "cb" | "ldam".
        distill: a `distill` block ({"loss", "weighting", "lam", "options"}); teacher: its source
            (see `teacher_block`). sampler: a `sampler` block ({"name", "options"}); Intrinsic and
            Extrinsic Sampling read the teacher's cache.
        """
        net = self.settings.student
        if arch is not None:
            net = net.model_copy(update={"arch": arch})
        cfg: dict = {
            "data": self.data_config(net.hflip),
            "model": self.model_config(net),
            "head": {"name": head, **(head_options or {})} if head is not None else None,
            "cls_loss": {"name": cls_loss},
            "train": self.train_config(net, seed),
        }
        if distill is not None:
            cfg["distill"] = distill
            cfg["teacher"] = self.teacher_block(teacher)
        if sampler is not None:
            cfg["sampler"] = sampler
            if sampler["name"] in ("intrinsic", "extrinsic") and "teacher" not in cfg:
                cfg["teacher"] = self.teacher_block("cache")
        return RunConfig.model_validate(cfg)

    # ---- evaluation
    def split(self, name: str = "test"):
        """(dataset, verification pairs) of the SynthFaces split `name`: "test" (reported numbers
        only) or "val" (hyper-parameter choice only; identities disjoint from train and test)."""
        if name == "test":
            return self.data.test, self.data.pairs
        if name == "val":
            val = getattr(self.data, "val", None)
            pairs = getattr(self.data, "val_pairs", None)
            if val is None or pairs is None:
                raise ValueError("this SynthFaces build has no validation split (data.val, data.val_pairs)")
            return val, pairs
        raise ValueError(f"unknown split {name!r}; expected 'test' or 'val'")

    def has_val(self) -> bool:
        """True when this SynthFaces build has a validation split."""
        return getattr(self.data, "val", None) is not None and getattr(self.data, "val_pairs", None) is not None

    def split_cache(self, model: nn.Module, split: str = "test") -> EmbeddingCache:
        """Embeddings of a SynthFaces split by `model` (flip-summed if `eval_flip`)."""
        return self.store.embed(model, self.split(split)[0], flip=self.settings.eval_flip)

    def test_cache(self, model: nn.Module) -> EmbeddingCache:
        """Embeddings of the SynthFaces test split by `model` (flip-summed if `eval_flip`)."""
        return self.split_cache(model, "test")

    def evaluate(self, model: nn.Module, split: str = "test") -> dict:
        """Verification on a SynthFaces split's pairs: `facekd.evaluate.verification.evaluate_pairs`
        (strict TAR@FAR 1e-2/1e-3/1e-4, insightface TAR, 10-fold accuracy, hard pairs, per group)."""
        from facekd.evaluate.verification import evaluate_pairs

        cache = self.split_cache(model, split)
        key = f"{split}/{cache.directory.name}"
        if key not in self._evals:
            dataset, pairs = self.split(split)
            emb = np.asarray(cache.embeddings)
            self._evals[key] = evaluate_pairs(emb, pairs, groups=dataset.groups, fars=FARS)
        return self._evals[key]

    def scores(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """(cosine scores (P,), issame (P,)) of `model` on the test pairs (for ROC plots)."""
        e = np.asarray(self.test_cache(model).embeddings)
        p = self.data.pairs
        return np.einsum("ij,ij->i", e[p.a], e[p.b]), np.asarray(p.issame, bool)

    def plot_roc(self, curves: dict[str, nn.Module], filename: str, title: str = "ROC") -> str:
        """Plot ROC curves {label: model} to run_dir/filename; returns the relative path."""
        from facekd.evaluate.verification import plot_roc

        plot_roc({label: self.scores(m) for label, m in curves.items()}, self.path(filename), title=title)
        return filename


__all__ = ["TEACHER_SOURCES", "DemoContext"]
