"""YAML run configs for `facekd train`, validated by pydantic (unknown keys are errors).

    task:     face                                         # classification | metric (+ metric: {...})
    data:     {kind: synthfaces, preset: default}          # or recordio / folder / list / arrays / idx /
                                                           #    market1501 / dukemtmc + path
    model:    {arch: mbf_tiny, embedding_size: 128}           # + options: {...} for the constructor
    head:     {name: arcface, s: 64, m: 0.5}               # null: feature-only student
    cls_loss: {name: ce}
    distill:  {loss: l2, weighting: uniform, lambda: 1.0, options: {}}     # optional
    teacher:  {cache: runs/teacher/cache_train}            # or {checkpoint: backbone.pth, arch: r50, online: true}
                                                           #    or {onnx: w600k_r50.onnx}
    sampler:  {name: uniform}                              # file (path: list.npy), intrinsic, extrinsic, usi,
                                                           #    pk (options: {p: 16, k: 4}; metric task)
    train:    {epochs: 10, batch_size: 128, lr: 0.1, ...}  # facekd.train.TrainConfig
    run_dir:  runs/my_run

`load_config(path, overrides=["train.lr=0.05"])` returns a validated `RunConfig`; every problem is
a one-line `ConfigError` naming the file and the key. `facekd.build.run_training(cfg)` builds and
trains it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from facekd.bias.sampling import SamplerConfig, build_sampler
from facekd.data.spec import DataConfig, build_dataset
from facekd.train import TrainConfig
from facekd.utils import atomic_path, parse_angle


class ConfigError(ValueError):
    """A config problem, as one line that names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _existing(p: Path | None, what: str) -> Path | None:
    if p is not None and not Path(p).exists():
        raise ValueError(f"{what} {p} does not exist")
    return p


class ModelConfig(_Strict):
    """The student backbone: `arch` (a name of `facekd.models.list_models()`), its embedding width
    and input side (defaults: the architecture's width, the dataset's image size) and `options`,
    keyword arguments of the architecture's constructor (e.g. `{width: 64}` for a wider
    `small_cnn`, `{dropout: 0.1}`); an option the constructor does not take is an error naming it.
    `init`: a backbone.pth (or run directory) whose weights the network starts from instead of
    random ones (fine-tuning); a run records its content, not its path."""

    arch: str = "mbf_tiny"
    embedding_size: int | None = Field(default=None, ge=1)
    input_size: int | None = Field(default=None, ge=8, description="default: the dataset's image size")
    options: dict[str, Any] = Field(default_factory=dict)
    init: Path | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.init is not None:
            from facekd.models.checkpoint import resolve_backbone_path

            if not Path(self.init).exists():
                raise ValueError(f"init: {self.init} does not exist (expected a backbone.pth or a run directory)")
            try:  # the file itself, so that every record keys it by that file's content
                self.init = resolve_backbone_path(self.init)
            except FileNotFoundError as e:
                raise ValueError(f"init: {e}") from None
        reserved = {"embedding_size", "input_size"} & set(self.options)
        if reserved:
            raise ValueError(f"options: give {' / '.join(sorted(reserved))} as model keys, not as options")
        if self.options:
            check_model_options(self.arch, self.options)
        return self


def check_model_options(arch: str, options: dict[str, Any]) -> None:
    """ValueError naming the options of `options` that the constructor of `arch` does not take."""
    import inspect

    from facekd.models import model_spec

    params = inspect.signature(model_spec(arch).build).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    taken = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise ValueError(f"options: {arch} does not take {' / '.join(unknown)} (it takes {' / '.join(taken)})")


class HeadConfig(_Strict):
    """`sharded` / `sample_rate`: the class centres split over the ranks (facekd.models.partial_fc;
    auto: under torchrun or above 100k classes) and the share of negative centres per step
    (auto: 1.0 up to 100k classes, 0.3 above); see facekd.build.head_sharding."""

    name: Literal["arcface", "cosface", "softmax"] = "arcface"
    s: float = Field(default=64.0, gt=0)
    m: float | None = Field(
        default=None, description="radians; default 0.5 (arcface) / 0.4 (cosface); accepts '28.6deg'"
    )
    sharded: bool | Literal["auto"] = "auto"
    sample_rate: float | Literal["auto"] = Field(default="auto")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sample_rate")
    @classmethod
    def _rate(cls, v):
        if v != "auto" and not 0.0 < v <= 1.0:
            raise ValueError(f"sample_rate must lie in (0, 1] or be auto, got {v}")
        return v

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # recorded only when set, so that runs recorded before these keys existed still match
        return {k: v for k, v in handler(self).items() if k not in ("sharded", "sample_rate") or v != "auto"}

    @field_validator("m", mode="before")
    @classmethod
    def _angle(cls, v):
        return parse_angle(v) if isinstance(v, str) else v


class ClsLossConfig(_Strict):
    name: Literal["ce", "focal", "cb", "ldam"] = "ce"
    options: dict[str, Any] = Field(default_factory=dict)


class DistillConfig(_Strict):
    loss: str = "l2"
    weighting: str = "uniform"
    lam: float = Field(default=1.0, alias="lambda", ge=0)
    normalize: bool = True
    options: dict[str, Any] = Field(default_factory=dict)


class TeacherConfig(_Strict):
    """Exactly one source of teacher embeddings:

    - `cache`: an EmbeddingCache directory computed on the training rows;
    - `checkpoint` (backbone.pth) + `arch`: a facekd / insightface backbone; its embedding width is
      read from the weights unless `embedding_size` is given;
    - `onnx`: an ONNX recognition model (insightface's model zoo, or `facekd export`); its
      architecture, width and input normalisation are read from the graph (no `arch`).

    A checkpoint or ONNX teacher runs on every batch (`online: true`) or is embedded once, from the
    un-augmented images, into `run_dir/teacher_cache` (`online: false`; `flip`: insightface's
    flip-sum). `head`: the teacher's head.pth (written by `facekd train` beside backbone.pth), for
    logit losses (HKD, GKD) with an online teacher: a margin head `head_name` (task face / metric)
    or a Linear classifier (task classification), its number of classes read from the file."""

    cache: Path | None = None
    checkpoint: Path | None = None
    onnx: Path | None = None
    arch: str | None = None
    embedding_size: int | None = Field(default=None, ge=1)
    online: bool = False
    flip: bool = False
    head: Path | None = None
    head_name: Literal["arcface", "cosface", "softmax"] = "arcface"

    @model_validator(mode="after")
    def _check(self):
        _existing(self.cache, "teacher cache")
        _existing(self.checkpoint, "teacher checkpoint")
        _existing(self.onnx, "teacher onnx")
        _existing(self.head, "teacher head")
        given = [k for k in ("cache", "checkpoint", "onnx") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of cache, checkpoint or onnx (got {', '.join(given) or 'none'})")
        if self.checkpoint is not None and self.arch is None:
            raise ValueError("checkpoint needs arch")
        if self.onnx is not None and (self.arch is not None or self.embedding_size is not None):
            raise ValueError("onnx: the architecture and the width come from the graph; drop arch / embedding_size")
        if self.online and self.cache is not None:
            raise ValueError("online needs checkpoint or onnx (a cache cannot run online)")
        if self.head is not None and not self.online:
            raise ValueError("head needs an online teacher (checkpoint or onnx + online: true)")
        return self


class MetricConfig(_Strict):
    """Options of `task: metric` (facekd.tasks.MetricTask; defaults = reid-strong-baseline):
    triplet on the feature before the BNNeck, ID loss (head) on the feature after it."""

    triplet_margin: float | None = Field(default=0.3, gt=0, description="null: soft margin")
    triplet_weight: float = Field(default=1.0, ge=0)
    triplet_normalize: bool = False
    center_weight: float = Field(default=0.0, ge=0, description="0: no center loss; RSB uses 5e-4")
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="for cls_loss ce")
    bnneck: bool = True
    distill_feat: Literal["after", "before"] = "after"


class RunConfig(_Strict):
    """`task`: face (FaceTask: margin head + cls_loss), classification (ClassificationTask: linear
    classifier, head name softmax) or metric (MetricTask: head + triplet (+ center), `metric` block).
    With task classification / metric a head without an explicit name is `softmax`."""

    task: Literal["face", "classification", "metric"] = "face"
    metric: MetricConfig | None = None
    data: DataConfig = Field(default_factory=lambda: DataConfig.model_validate({}))
    model: ModelConfig = Field(default_factory=ModelConfig)
    head: HeadConfig | None = Field(default_factory=HeadConfig)
    cls_loss: ClsLossConfig = Field(default_factory=ClsLossConfig)
    distill: DistillConfig | None = None
    teacher: TeacherConfig | None = None
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run_dir: Path = Path("runs/train")

    @model_validator(mode="after")
    def _check(self):
        if self.task != "face" and self.head is not None and "name" not in self.head.model_fields_set:
            self.head.name = "softmax"
        if self.task == "classification" and (self.head is None or self.head.name != "softmax"):
            raise ValueError("task classification needs head {name: softmax} (a linear classifier)")
        if self.metric is not None and self.task != "metric":
            raise ValueError(f"the metric block applies only to task metric, not {self.task}")
        if self.sampler.name == "pk":
            if self.task != "metric":
                raise ValueError(f"sampler pk is for task metric, not {self.task}")
            pk = self.sampler.options["p"] * self.sampler.options["k"]
            if self.train.batch_size != pk:
                raise ValueError(f"sampler pk: train.batch_size must be p·k = {pk}, got {self.train.batch_size}")
        if (
            self.head is None
            and self.distill is None
            and not (self.task == "metric" and (self.metric or MetricConfig()).triplet_weight > 0)
        ):
            raise ValueError("head is null and there is no distill block: nothing to train")
        if self.distill is not None and self.teacher is None:
            raise ValueError("distill needs a teacher block")
        if self.sampler.name in ("intrinsic", "extrinsic") and self.teacher is None:
            raise ValueError(f"sampler {self.sampler.name} needs a teacher (its embeddings)")
        return self


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def format_validation_error(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] not in ("value_error", "missing") and "input" in e:
            msg += f" (got {e['input']!r})"
        parts.append(f"{loc}: {msg}")
    return f"{where}: " + "; ".join(parts)


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply `a.b.c=value` strings (value parsed as YAML: 0.05, true, [1, 2], null) to a nested dict."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.lr=0.05)")
        key, value = item.split("=", 1)
        keys = key.strip().split(".")
        if not all(keys):
            raise ConfigError(f"override {item!r}: empty key part")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = parsed
    return out


def read_yaml_mapping(path: str | Path) -> dict:
    """The top-level mapping of a YAML file; ConfigError (one line naming the file) otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); expected a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults with path=None), apply overrides, validate.

    Relative paths inside the file are taken as written (relative to the working directory).
    Raises ConfigError (one line naming the file and key) on any problem.
    """
    where = str(path) if path is not None else "config"
    raw = apply_overrides(read_yaml_mapping(path) if path is not None else {}, overrides)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def dump_config(cfg: RunConfig) -> str:
    """The fully resolved config as YAML (keys by alias, e.g. distill.lambda)."""
    return yaml.safe_dump(json.loads(cfg.model_dump_json(by_alias=True)), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config atomically (run_dir/config.yaml)."""
    with atomic_path(path) as tmp:
        tmp.write_text(dump_config(cfg))


# --------------------------------------------------------------------------------------------
# the dataset and the sampler a config describes (the rest of a run: facekd.build)
# --------------------------------------------------------------------------------------------


__all__ = [
    "ClsLossConfig",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "HeadConfig",
    "MetricConfig",
    "ModelConfig",
    "RunConfig",
    "SamplerConfig",
    "TeacherConfig",
    "apply_overrides",
    "build_dataset",
    "build_sampler",
    "dump_config",
    "load_config",
    "save_config",
]
