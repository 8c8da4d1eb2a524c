"""What a sampler is, and the registry that builds one from (name, options).

A sampler decides which dataset rows one epoch trains on. It is built once per run from
    name     a registered kind (`SAMPLERS`: one module of this package each),
    options  a dict validated by that kind's pydantic schema (the same schema for YAML configs
             and for `facekd resample`),
    data     `SamplingData`: the row count, labels and, for Intrinsic / Extrinsic Sampling, the
             teacher embeddings,
    seed     the run's seed,
and then gives, for every epoch, `indices(epoch)` → int64 (num,) dataset rows. Expensive state
(a density, a nearest-neighbour index) is computed on first use and kept for later epochs.
`describe()` is plain JSON data (name, seed, options with every value resolved, e.g. the
bandwidth in radians): two samplers that draw different lists describe themselves differently.

A sampler is also callable (`sampler(epoch)`), which is what `facekd.data.sampler.IndexListSampler`
regenerates each epoch; the PK sampler is a `torch.utils.data.Sampler` itself (its batches are
dealt whole to ranks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "SAMPLERS",
    "BaseSampler",
    "EpochSampler",
    "SamplerKind",
    "SamplerOptions",
    "SamplingData",
    "register_sampler",
    "sampler_kind",
    "validate_options",
]


class SamplerOptions(BaseModel):
    """Base of every sampler's option schema: unknown keys are errors, values are plain data."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class SamplingData:
    """What samplers read. n: rows; labels: int (n,) or None; embeddings: float32 (n, d) teacher
    embeddings or None; progress: show progress bars for long steps (density, index build)."""

    n: int
    labels: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    progress: bool = False

    def require(self, what: Sequence[str], sampler: str) -> None:
        """ValueError naming the first missing input among "labels" / "embeddings"."""
        for key in what:
            if getattr(self, key) is None:
                noun = "the teacher embeddings" if key == "embeddings" else "the dataset labels"
                raise ValueError(f"sampler {sampler} needs {noun}")
        if self.n <= 0:
            raise ValueError(f"sampler {sampler}: the dataset is empty (n={self.n})")


@runtime_checkable
class EpochSampler(Protocol):
    """The interface every registered sampler has."""

    def indices(self, epoch: int) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...

    def __call__(self, epoch: int) -> np.ndarray: ...


class BaseSampler(ABC):
    """Shared part of the samplers of this package: options, seed, `describe()`, callable."""

    name: ClassVar[str] = ""

    def __init__(self, options: SamplerOptions, data: SamplingData, seed: int):
        self.options, self.data, self.seed = options, data, int(seed)

    @abstractmethod
    def indices(self, epoch: int) -> np.ndarray:
        """One epoch of draws: int64 (num,) dataset rows, a function of (seed, epoch, options)."""

    def resolved_options(self) -> dict[str, Any]:
        """Options as JSON data, every value resolved (subclasses replace e.g. 'auto')."""
        return self.options.model_dump(mode="json")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "options": self.resolved_options()}

    def __call__(self, epoch: int) -> np.ndarray:
        return self.indices(epoch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


Builder = Callable[[Any, SamplingData, int], EpochSampler]


@dataclass(frozen=True)
class SamplerKind:
    """A registered sampler: its option schema, its builder and the inputs it needs."""

    name: str
    options: type[SamplerOptions]
    build: Builder
    needs: tuple[str, ...]
    summary: str


SAMPLERS: dict[str, SamplerKind] = {}


def register_sampler(name: str, options: type[SamplerOptions], needs: Sequence[str] = ()):
    """Decorator registering a builder `(options, data, seed) -> sampler` (a class or a function)
    under `name`. needs: inputs of `SamplingData` it reads ("labels", "embeddings")."""

    def deco(build):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is registered twice")
        doc = (build.__doc__ or "").strip().splitlines()
        SAMPLERS[name] = SamplerKind(name, options, build, tuple(needs), doc[0] if doc else "")
        if isinstance(build, type) and issubclass(build, BaseSampler):
            build.name = name
        return build

    return deco


def sampler_kind(name: str) -> SamplerKind:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def validate_options(name: str, raw: dict[str, Any]) -> SamplerOptions:
    """The options of sampler `name`, validated; one-line ValueError naming the option otherwise."""
    kind = sampler_kind(name)
    if not isinstance(raw, dict):
        raise ValueError(f"sampler {name}: options must be a mapping, got {type(raw).__name__}")
    try:
        return kind.options.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"sampler {name}: {_one_line(e, kind.options)}") from None


def _one_line(err: ValidationError, schema: type[BaseModel]) -> str:
    unknown = [".".join(map(str, e["loc"])) for e in err.errors() if e["type"] == "extra_forbidden"]
    parts = []
    if unknown:
        parts.append(f"unknown options {unknown}; expected {', '.join(schema.model_fields)}")
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            continue
        msg = e["msg"].removeprefix("Value error, ")
        got = f" (got {e['input']!r})" if e["type"] not in ("value_error", "missing") and "input" in e else ""
        parts.append(f"option {'.'.join(map(str, e['loc']))}: {msg}{got}")
    return "; ".join(parts)
