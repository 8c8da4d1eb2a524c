"""Content-addressed stages: each trained run and each embedding cache lives in a directory named by
the digest of everything that determines it, so pipelines that share a step share its result.

    <root>/runs/<digest>/     a training run: a `facekd.config.RunConfig` trained by `run_training`
    <root>/caches/<digest>/   an `EmbeddingCache` of a model over a dataset's un-augmented rows

A run's digest covers its config (without `run_dir` and the settings that may change when a run is
resumed), the dataset fingerprint, and the content of every file the config points to (teacher
cache, teacher checkpoint, sample list), never where those files are. A cache's digest covers the
model checksum, the dataset fingerprint, the row count and the preprocessing (flip, normalize). A
finished directory is reused; an unfinished one resumes (the trainer and `embed_dataset` resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from torch import nn

from facekd import store
from facekd.build import TEACHER_FILES, run_training
from facekd.config import RunConfig
from facekd.data.spec import DataConfig, build_dataset
from facekd.embed import CACHE_RECORD_KEYS, EmbeddingCache, cache_record, embed_dataset

State = Literal["done", "partial", "new"]


def digest(obj: Any) -> str:
    """The directory name of a stage: the first 16 hex digits of `facekd.store.digest` (plain data
    only; anything else is refused)."""
    return store.digest(obj)[:16]


def file_digest(path: str | Path) -> str:
    """sha256 (16 hex digits) of a file's bytes."""
    return store.file_digest(path)[:16]


def content_identity(path: str | Path) -> Any:
    """What a path in a config stands for: an embedding cache directory → the meta.json keys that
    identify its rows (model checksum, dataset fingerprint, N, flip, normalize); a file → its
    sha256. FileNotFoundError when neither exists."""
    p = Path(path)
    if p.is_dir():
        meta = EmbeddingCache.open(p).meta
        return {k: meta.get(k) for k in CACHE_RECORD_KEYS}
    if p.is_file():
        return "sha256:" + file_digest(p)
    raise FileNotFoundError(f"{p} does not exist")


# Config fields that name a file or directory: keyed by its content, never by its location.
_FILE_FIELDS = {"model": ("init",), "teacher": tuple(sorted(TEACHER_FILES)), "sampler": ("path",)}
# DataConfig fields that say where data lives (its content is the dataset fingerprint).
_DATA_LOCATIONS = ("cache_dir", "path")


@dataclass
class TrainedRun:
    """A finished training run: its directory (`runs/<digest>`), config and trained task (eval mode)."""

    directory: Path
    config: RunConfig
    task: nn.Module

    @property
    def digest(self) -> str:
        return self.directory.name

    @property
    def model(self) -> nn.Module:
        """The trained backbone (`task.student`)."""
        return cast(nn.Module, self.task.student)


def distill_option_defaults(loss: str, weighting: str) -> dict[str, Any]:
    """The defaults of the options of a distillation loss and weighting (`option_defaults`)."""
    from facekd.losses.distill.base import LOSSES
    from facekd.losses.registry import option_defaults
    from facekd.losses.weighting.base import WEIGHTINGS

    return {"loss": option_defaults(LOSSES[loss].Options), "weighting": option_defaults(WEIGHTINGS[weighting].Options)}


class StageStore:
    """Trained runs and embedding caches under `root`, each in the directory named by its digest."""

    def __init__(self, root: str | Path, progress: bool = True):
        self.root = Path(root)
        self.progress = progress
        self._fingerprints: dict[str, str] = {}

    # ---- training runs
    def fingerprint(self, data: DataConfig) -> str:
        """The fingerprint of the dataset `data` describes (built once per config)."""
        key = data.model_dump_json()
        if key not in self._fingerprints:
            self._fingerprints[key] = str(build_dataset(data).fingerprint())
        return self._fingerprints[key]

    def run_key(self, cfg: RunConfig) -> dict:
        """Plain data that determines the result of `cfg` (what its directory name digests)."""
        key = cfg.model_dump(mode="json", by_alias=True, exclude={"run_dir"})
        key["train"] = {k: v for k, v in key["train"].items() if k not in store.RESUMABLE}
        key["data"] = {k: v for k, v in key["data"].items() if k not in _DATA_LOCATIONS}
        key["data"]["fingerprint"] = self.fingerprint(cfg.data)
        if cfg.distill is not None:
            key["distill"]["option_defaults"] = distill_option_defaults(cfg.distill.loss, cfg.distill.weighting)
        for block, fields in _FILE_FIELDS.items():
            for name in fields:
                if key.get(block) and key[block].get(name) is not None:
                    key[block][name] = content_identity(key[block][name])
        return key

    def run_dir(self, cfg: RunConfig) -> Path:
        """`root/runs/<digest of run_key(cfg)>`."""
        return self.root / "runs" / digest(self.run_key(cfg))

    def run_state(self, cfg: RunConfig) -> State:
        """State of the run `cfg`: "done" (finished, reused), "partial" (resumed) or "new"."""
        return state_of(self.run_dir(cfg))

    def train(self, cfg: RunConfig) -> TrainedRun:
        """Train `cfg` in its directory (reused when finished, resumed when partial)."""
        directory = self.run_dir(cfg)
        placed = cfg.model_copy(update={"run_dir": directory})
        task = run_training(placed, resume=True, progress=self.progress)
        return TrainedRun(directory, placed, task)

    # ---- embedding caches
    def cache_dir(self, model: nn.Module, dataset, flip: bool = False, normalize: bool = True) -> Path:
        """`root/caches/<digest>` of `model` over `dataset` (already without augmentation)."""
        return self.root / "caches" / digest(cache_record(model, dataset, flip, normalize))

    def embed(
        self, model: nn.Module, dataset, *, flip: bool = False, normalize: bool = True, batch_size: int = 256
    ) -> EmbeddingCache:
        """EmbeddingCache of `model` over `dataset.without_augmentation()` (row i ↔ item i)."""
        rows = dataset.without_augmentation()
        return embed_dataset(
            model,
            rows,
            self.cache_dir(model, rows, flip, normalize),
            flip=flip,
            batch_size=batch_size,
            normalize=normalize,
            progress=self.progress,
        )


def state_of(directory: Path) -> State:
    """State of a run or cache directory: "done" (finished, reused), "partial" (resumed) or "new"."""
    if (directory / "done").exists() or (directory / "meta.json").exists():
        return "done"
    return "partial" if directory.exists() else "new"


__all__ = ["StageStore", "TrainedRun", "content_identity", "digest", "file_digest", "state_of"]
