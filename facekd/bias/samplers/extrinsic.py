"""Extrinsic Sampling (Sec. 4.1 of "Rectifying the Data Bias"): the training row nearest to each of
`num` directions drawn uniformly on the sphere."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from facekd.bias.blocks import auto_device
from facekd.bias.nearest import EXACT_MAX, make_search, nearest_to_random_directions, resolve_search
from facekd.bias.samplers.base import BaseSampler, SamplerOptions, SamplingData, register_sampler
from facekd.bias.samplers.uniform import check_num
from facekd.bias.shortlist import resolve_dtype
from facekd.utils import check_embeddings

__all__ = ["ExtrinsicOptions", "ExtrinsicSampler", "extrinsic_sampling"]


def extrinsic_sampling(embeddings, num: int | None = None, seed: int = 0, *, search=None) -> np.ndarray:
    """Extrinsic Sampling: for each of `num` (default N) directions a = g/‖g‖, g ~ N(0, I_d) (uniform
    on the sphere, `facekd.bias.nearest.random_directions`), the dataset row with the largest
    cosine to a. search: a prebuilt search over the normalised embeddings (default: exact FAISS
    IndexFlatIP, `facekd.bias.nearest.make_search`). Returns int64 (num,).
    """
    x = check_embeddings(embeddings, "embeddings", require_unit=True)
    search = make_search(x, "flat") if search is None else search
    return nearest_to_random_directions(search, x.shape[1], check_num(num, x.shape[0]), seed)


class ExtrinsicOptions(SamplerOptions):
    num: int | None = Field(None, ge=0, strict=True, description="draws per epoch; default: the dataset size")
    search: Literal["auto", "flat", "torch", "ivf"] = Field(
        "auto", description="auto: torch on CUDA; on CPU flat (exact) up to exact_max rows, ivf above"
    )
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1")
    dtype: Literal["float32", "tf32", "bf16"] = Field("tf32", description="products of the torch search on CUDA")
    exact_max: int = Field(EXACT_MAX, ge=0, strict=True, description="auto on CPU: exact up to this many rows")
    nprobe: int = Field(32, ge=1, strict=True, description="ivf: identity cells searched per direction")
    coarse: Literal["auto", "bf16", "float32"] = Field(
        "auto", description="ivf: dtype of the cell ranking; auto: bf16 where the CPU has bf16 dot products"
    )
    cell_max: int = Field(256, ge=1, strict=True, description="ivf: larger identities are split by k-means")


@register_sampler("extrinsic", ExtrinsicOptions, needs=("embeddings",))
class ExtrinsicSampler(BaseSampler):
    """Extrinsic Sampling on the teacher embeddings: the search index is built once (first
    epoch); each epoch searches the directions of stream seed + epoch, shared out over the
    torchrun ranks (`facekd.bias.nearest`)."""

    options: ExtrinsicOptions

    def __init__(self, options: ExtrinsicOptions, data: SamplingData, seed: int):
        data.require(("embeddings",), self.name)
        super().__init__(options, data, seed)
        assert data.embeddings is not None  # checked by require
        self.x = check_embeddings(data.embeddings, "teacher embeddings", require_unit=True)
        self.device = auto_device(options.device)
        self.search = resolve_search(options.search, self.x.shape[0], self.device, options.exact_max)
        self._searcher = None

    def searcher(self):
        """The search over the embeddings, built on first use and kept."""
        if self._searcher is None:
            o = self.options
            dtype = o.dtype if self.device.type == "cuda" else "float32"
            self._searcher = make_search(
                self.x,
                self.search,
                labels=self.data.labels,
                device=self.device,
                dtype=dtype,
                nprobe=o.nprobe,
                cell_max=o.cell_max,
                coarse=o.coarse,
            )
        return self._searcher

    def indices(self, epoch: int) -> np.ndarray:
        num = check_num(self.options.num, self.data.n)
        return nearest_to_random_directions(
            self.searcher(), self.x.shape[1], num, self.seed + int(epoch), self.data.progress
        )

    def resolved_options(self) -> dict:
        o = self.options
        out = {"num": o.num, "search": self.search}
        if self.search == "torch":
            out["dtype"] = o.dtype if self.device.type == "cuda" else "float32"
        if self.search == "ivf":
            out.update(nprobe=o.nprobe, cell_max=o.cell_max, coarse=resolve_dtype(o.coarse))
        return out
