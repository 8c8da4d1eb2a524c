"""The `sampler:` block of a run config and the one function that turns it into a sampler.

    sampler: {name: uniform}                                  # default: a shuffle per epoch
    sampler: {name: intrinsic, options: {bandwidth: auto}}    # or 12deg; density: {method: knn, ...}
    sampler: {name: extrinsic, options: {search: hnsw}}
    sampler: {name: usi, options: {num: 100000}}
    sampler: {name: file, path: samples.npy}
    sampler: {name: pk, options: {p: 16, k: 4}}               # task metric; batch_size = p·k

`options` are validated by the sampler's own schema (`facekd.bias.samplers`), the one
`facekd resample` validates its flags with; after validation they hold every default, so the
resolved config shows them. `build_sampler` returns the sampler object (`EpochSampler`): the
trainer regenerates its list each epoch (it is callable as epoch → indices; "pk" is a torch
Sampler), and `describe()` is what a run digest hashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from facekd.bias.samplers import EpochSampler, SamplerOptions, SamplingData, sampler_kind, validate_options

__all__ = ["SamplerConfig", "build_sampler"]


class SamplerConfig(BaseModel):
    """name: a registered sampler (uniform, file, intrinsic, extrinsic, usi, pk); path: the list
    of sampler "file"; options: that sampler's options (see its module in facekd.bias.samplers)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = "uniform"
    path: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        sampler_kind(self.name)
        if (self.name == "file") != (self.path is not None):
            raise ValueError("path is needed by (and only by) sampler name 'file'")
        if self.path is not None and not Path(self.path).exists():
            raise ValueError(f"sample list {self.path} does not exist")
        self.options = self.sampler_options().model_dump(mode="json", exclude={"path"})
        return self

    def sampler_options(self) -> SamplerOptions:
        """The options validated by the sampler's schema (for "file", with `path`)."""
        raw = dict(self.options)
        if self.path is not None:
            raw["path"] = self.path
        return validate_options(self.name, raw)


def build_sampler(cfg: SamplerConfig, dataset, seed: int, embeddings=None, *, progress: bool = True) -> EpochSampler:
    """The sampler `cfg` describes, over `dataset` (its length and `labels`), seeded by `seed`.

    embeddings: the teacher's (N, d) embeddings, or an object holding them as `.embeddings` (an
    EmbeddingCache); needed by intrinsic and extrinsic. Expensive state is computed on first use."""
    kind = sampler_kind(cfg.name)
    emb = getattr(embeddings, "embeddings", embeddings)
    n = len(dataset)
    if emb is not None and np.shape(emb)[0] != n:
        raise ValueError(f"sampler {cfg.name}: the teacher embeddings have {np.shape(emb)[0]} rows, the dataset {n}")
    labels = getattr(dataset, "labels", None)
    data = SamplingData(
        n=n,
        labels=None if labels is None else np.asarray(labels),
        embeddings=None if emb is None else np.asarray(emb),
        progress=progress,
    )
    return kind.build(cfg.sampler_options(), data, seed)
