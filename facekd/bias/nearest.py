"""The nearest embedding (largest cosine) to each of many random directions: Extrinsic Sampling's search.

Directions. Block b of an epoch covers directions [b·QUERY_BLOCK, (b+1)·QUERY_BLOCK): g/‖g‖ with
g ~ N(0, I_d) from `Generator(PCG64(seed).jumped(b))`, cast to float32 before normalising. Block 0
is `default_rng(seed)`'s stream, so a list of at most QUERY_BLOCK draws (65,536) is the one drawn
before blocks existed; every block can be generated on its own, so under torchrun each rank
draws and searches only its share of the blocks (`facekd.dist.shard_range`) and the results are
all-gathered: every rank returns the whole list, the search done once.

Searches (`make_search`):
- "flat": exact, FAISS IndexFlatIP (CPU, BLAS). Ties go to the row FAISS returns.
- "torch": exact, chunked products in torch with a running arg-max (any device; the GPU path).
  Reference and query blocks come from `facekd.bias.blocks.plan_blocks`; products in float32,
  tf32 or bf16 (float32 cosines either way), the arg-max kept on the device. Ties go to the lowest
  row.
- "ivf": approximate, cells that follow the identities (`IVFSearch`): per direction it scores the
  identity means (in bf16 where the CPU has bf16 dot products) and the rows of the best 32
  identities in float32, a few percent of the exact work. It
  misses the exact answer for some directions (recall measured in benchmarks/scale.py) and returns
  a row of nearly the same cosine instead. FAISS's IndexHNSWFlat over all rows was measured
  first: at 20k rows it needed 2.4× the exact search's time for 78 % recall, and its misses
  lowered the list's uniformity well beyond the seed spread (docs/bias.md).
- "auto": "torch" on CUDA; on the CPU "flat" up to `exact_max` rows (default 50,000: small sets,
  the demo's among them, keep their exact lists), "ivf" above.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from facekd import dist
from facekd.bias.blocks import Reference, as_tensor, plan_blocks
from facekd.bias.cells import identity_cells
from facekd.bias.shortlist import Shortlist

__all__ = [
    "EXACT_MAX",
    "QUERY_BLOCK",
    "FlatSearch",
    "IVFSearch",
    "TorchSearch",
    "make_search",
    "nearest_to_random_directions",
    "random_directions",
]

QUERY_BLOCK = 65536
SEARCH_BLOCKS = 8  # direction blocks handed to one search call (524,288 directions, 1 GiB at d = 512)
EXACT_MAX = 50_000
_TORCH_DTYPES = {"float32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def random_directions(seed: int, block: int, rows: int, d: int) -> np.ndarray:
    """Rows of block `block` of the direction stream of `seed` (module docstring). float32 (rows, d)."""
    rng = np.random.Generator(np.random.PCG64(seed).jumped(block))
    g = rng.standard_normal((rows, d)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g


class FlatSearch:
    """Exact search with FAISS IndexFlatIP over unit rows x (N, d) float32."""

    name = "flat"

    def __init__(self, x: np.ndarray):
        import faiss

        self.index = faiss.IndexFlatIP(x.shape[1])
        self.index.add(x)

    def search(self, queries: np.ndarray) -> np.ndarray:
        """Row of the largest inner product for each query (q, d) float32 → int64 (q,)."""
        _, nbr = self.index.search(queries, 1)
        return nbr[:, 0].astype(np.int64)


class IVFSearch:
    """Approximate search over cells that follow the identities (`facekd.bias.cells`).

    A direction probes the `nprobe` cells whose mean embedding has the largest inner product with
    it (a product against the C cell means), then takes the best row of those cells exactly:
    directions are grouped by probed cell and each cell is one float32 matrix product of its
    directions against its rows. Per direction that is C + nprobe × (rows per cell) inner
    products instead of N: with identities of 25 to 60 images, 3 to 8 % of the exact search. The
    first step still grows with N (C ∝ N, so N directions cost N·C), and from about 20k rows it is
    most of the time; it only ranks cells, so it is a `facekd.bias.shortlist.Shortlist` (`coarse`:
    its dtype, bf16 where the CPU has bf16 dot products). The rows of the probed cells are always
    scored in float32. The search misses the exact answer when the best row's identity is not
    among the probed ones (recall measured in benchmarks/scale.py). A graph index over the means
    (FAISS HNSW) was tried for the first step: random directions are far from every mean, its
    search visited most of the graph, and it was 12× slower than the product at 3,200 cells."""

    name = "ivf"

    def __init__(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        *,
        nprobe: int = 32,
        cell_max: int = 256,
        coarse: str = "auto",
        seed: int = 0,
    ):
        self.x = x
        self.cells = identity_cells(x, labels, cell_max, seed)
        self.nprobe = min(nprobe, self.cells.count)
        self.coarse = Shortlist(self.cells.means, coarse)

    def probes(self, queries: np.ndarray) -> np.ndarray:
        """The `nprobe` cells of largest mean inner product for each query (q, d) → int64 (q, nprobe),
        in no particular order."""
        return self.coarse.search(queries, self.nprobe)

    def search(self, queries: np.ndarray) -> np.ndarray:
        nq, p = queries.shape[0], self.nprobe
        pair_cell = self.probes(queries).ravel()
        order = np.argsort(pair_cell, kind="stable")
        sorted_cells = pair_cell[order]
        bounds = np.flatnonzero(np.diff(sorted_cells)) + 1
        best = np.full(nq * p, -np.inf, np.float32)
        row = np.zeros(nq * p, np.int64)
        for pos in np.split(np.arange(order.size), bounds):
            if pos.size == 0:
                continue
            c = sorted_cells[pos[0]]
            members = self.cells.members(c)
            pairs = order[pos]
            scores = queries[pairs // p] @ self.x[members].T
            arg = scores.argmax(1)
            best[pairs], row[pairs] = scores[np.arange(pairs.size), arg], members[arg]
        pick = best.reshape(nq, p).argmax(1)
        return row.reshape(nq, p)[np.arange(nq), pick]


class TorchSearch:
    """Exact search by chunked products Q·Rᵀ with a running arg-max, on any torch device.

    x: unit rows (N, d) on the host; dtype: "float32", "tf32" (CUDA) or "bf16" (products in bf16,
    cosines written in float32); memory_bytes / chunk_bytes: see facekd.bias.blocks.plan_blocks."""

    name = "torch"

    def __init__(
        self,
        x: np.ndarray,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        *,
        memory_bytes: int | None = None,
        chunk_bytes: int | None = None,
    ):
        if dtype not in _TORCH_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_TORCH_DTYPES)}, got {dtype!r}")
        self.device, self.dtype = torch.device(device), dtype
        if dtype in ("tf32", "bf16") and self.device.type != "cuda":
            raise ValueError(f"dtype {dtype!r} is a GPU option; use float32 on {self.device}")
        self.ref = as_tensor(x)
        self.memory_bytes, self.chunk_bytes = memory_bytes, chunk_bytes
        self._reference: Reference | None = None  # kept between calls: one copy to the device per epoch

    def search(self, queries: np.ndarray) -> np.ndarray:
        tdt = _TORCH_DTYPES[self.dtype]
        n_q, d = queries.shape
        plan = plan_blocks(
            n_q,
            self.ref.shape[0],
            d,
            ref_bytes_per_value=torch.finfo(tdt).bits // 8,
            device=self.device,
            chunk_bytes=self.chunk_bytes,
            memory_bytes=self.memory_bytes,
        )
        q = torch.from_numpy(queries).to(device=self.device, dtype=tdt)
        best = torch.full((n_q,), -math.inf, device=self.device)
        arg = torch.zeros(n_q, dtype=torch.long, device=self.device)
        prev_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.dtype == "tf32"
        try:
            reference = self._reference
            if reference is None or (reference.plan.resident, reference.plan.ref_rows) != (
                plan.resident,
                plan.ref_rows,
            ):
                reference = self._reference = Reference(self.ref, plan, self.device, tdt)
            for r0, ref in reference.blocks():
                for s in range(0, n_q, plan.query_rows):
                    e = min(s + plan.query_rows, n_q)
                    if tdt == torch.bfloat16:
                        c = torch.mm(q[s:e], ref.T, out_dtype=torch.float32)
                    else:
                        c = q[s:e] @ ref.T
                    v, i = c.max(1)
                    better = v > best[s:e]  # strict: an earlier block keeps a tie (lowest row wins)
                    best[s:e] = torch.where(better, v, best[s:e])
                    arg[s:e] = torch.where(better, i + r0, arg[s:e])
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev_tf32
        return arg.cpu().numpy()


def resolve_search(search: str, n: int, device: torch.device, exact_max: int = EXACT_MAX) -> str:
    """The concrete search "auto" stands for (module docstring)."""
    if search not in ("auto", "flat", "torch", "ivf"):
        raise ValueError(f"search must be auto, flat, torch or ivf, got {search!r}")
    if search != "auto":
        return search
    if device.type == "cuda":
        return "torch"
    return "flat" if n <= exact_max else "ivf"


def make_search(
    x: np.ndarray,
    search: str = "auto",
    *,
    labels: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    exact_max: int = EXACT_MAX,
    nprobe: int = 32,
    cell_max: int = 256,
    coarse: str = "auto",
):
    """A search over the unit rows x (N, d) float32: FlatSearch, IVFSearch (needs the labels (N,))
    or TorchSearch."""
    device = torch.device(device)
    kind = resolve_search(search, x.shape[0], device, exact_max)
    if kind in ("flat", "ivf") and device.type != "cpu":
        raise ValueError(f"search {kind!r} runs on the CPU (FAISS); use search torch on {device}")
    if kind == "flat":
        return FlatSearch(x)
    if kind == "torch":
        return TorchSearch(x, device, dtype)
    if labels is None:
        raise ValueError("search ivf needs the labels: its cells follow the identities")
    return IVFSearch(x, labels, nprobe=nprobe, cell_max=cell_max, coarse=coarse)


def nearest_to_random_directions(searcher, d: int, num: int, seed: int, progress: bool = False) -> np.ndarray:
    """For `num` random directions of the stream `seed`, the nearest row found by `searcher`.

    Under torchrun each rank searches its share of the direction blocks and the rows are
    all-gathered, so every rank returns the same int64 (num,)."""
    blocks = -(-num // QUERY_BLOCK)
    b0, b1 = dist.shard_range(blocks)
    local = []
    bar = tqdm(total=b1 - b0, desc="nearest embeddings", unit="block", disable=not progress or not dist.is_main())

    def draw(b: int) -> np.ndarray:
        return random_directions(seed, b, min(QUERY_BLOCK, num - b * QUERY_BLOCK), d)

    # blocks are drawn on host threads (NumPy releases the GIL while it fills an array)
    with ThreadPoolExecutor(max(1, min(SEARCH_BLOCKS, os.cpu_count() or 1))) as pool:
        for g0 in range(b0, b1, SEARCH_BLOCKS):  # a few blocks per search: fewer, larger products
            group = range(g0, min(g0 + SEARCH_BLOCKS, b1))
            local.append(searcher.search(np.concatenate(list(pool.map(draw, group)))))
            bar.update(len(group))
    bar.close()
    mine = np.concatenate(local) if local else np.empty(0, np.int64)
    if dist.world_size() == 1:
        return mine
    device = torch.device("cuda", torch.cuda.current_device()) if _backend_is_nccl() else torch.device("cpu")
    return dist.all_gather_cat(torch.from_numpy(mine).to(device)).cpu().numpy()


def _backend_is_nccl() -> bool:
    import torch.distributed as tdist

    return tdist.get_backend() == "nccl"
