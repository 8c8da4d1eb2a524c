"""The nearest embedding (largest cosine) to each of many random directions: Extrinsic Sampling's search.

Directions. Draw b of an epoch covers directions [b·QUERY_BLOCK, (b+1)·QUERY_BLOCK): g/‖g‖ with
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
- "hnsw": approximate, FAISS IndexHNSWFlat on inner products (CPU). Building costs about
  N log N and each query about log N, so an epoch grows about linearly in N; it misses the exact
  answer for some directions (recall measured in benchmarks/scale.py and docs/bias.md) and
  returns a row of nearly the same cosine instead. Built with more than one FAISS thread the graph,
  hence the list, can differ between runs.
- "auto": "torch" on CUDA; on the CPU "flat" up to `exact_max` rows (default 100,000, where the
  measured HNSW epoch stops being cheaper than the exact one), "hnsw" above.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from facekd import dist
from facekd.bias.blocks import Reference, as_tensor, plan_blocks

__all__ = [
    "EXACT_MAX",
    "QUERY_BLOCK",
    "FlatSearch",
    "HNSWSearch",
    "TorchSearch",
    "make_search",
    "nearest_to_random_directions",
    "random_directions",
]

QUERY_BLOCK = 65536
EXACT_MAX = 100_000
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


class HNSWSearch:
    """Approximate search with FAISS IndexHNSWFlat (inner product) over unit rows x (N, d).

    m: graph degree; ef_construction / ef_search: candidate list sizes when building / searching
    (larger: higher recall, slower)."""

    name = "hnsw"

    def __init__(self, x: np.ndarray, m: int = 32, ef_construction: int = 80, ef_search: int = 256):
        import faiss

        self.index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.index.add(x)

    def search(self, queries: np.ndarray) -> np.ndarray:
        _, nbr = self.index.search(queries, 1)
        return nbr[:, 0].astype(np.int64)


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
            for r0, ref in Reference(self.ref, plan, self.device, tdt).blocks():
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
    if search != "auto":
        return search
    if device.type == "cuda":
        return "torch"
    return "flat" if n <= exact_max else "hnsw"


def make_search(
    x: np.ndarray,
    search: str = "auto",
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    exact_max: int = EXACT_MAX,
    hnsw_m: int = 32,
    hnsw_ef_construction: int = 80,
    hnsw_ef_search: int = 256,
):
    """A search over the unit rows x (N, d) float32: FlatSearch, HNSWSearch or TorchSearch."""
    device = torch.device(device)
    kind = resolve_search(search, x.shape[0], device, exact_max)
    if kind in ("flat", "hnsw") and device.type != "cpu":
        raise ValueError(f"search {kind!r} runs on the CPU (FAISS); use search torch on {device}")
    if kind == "flat":
        return FlatSearch(x)
    if kind == "hnsw":
        return HNSWSearch(x, hnsw_m, hnsw_ef_construction, hnsw_ef_search)
    if kind == "torch":
        return TorchSearch(x, device, dtype)
    raise ValueError(f"search must be auto, flat, torch or hnsw, got {search!r}")


def nearest_to_random_directions(searcher, d: int, num: int, seed: int, progress: bool = False) -> np.ndarray:
    """For `num` random directions of the stream `seed`, the nearest row found by `searcher`.

    Under torchrun each rank searches its share of the direction blocks and the rows are
    all-gathered, so every rank returns the same int64 (num,)."""
    blocks = -(-num // QUERY_BLOCK)
    b0, b1 = dist.shard_range(blocks)
    bar = tqdm(range(b0, b1), desc="nearest embeddings", unit="block", disable=not progress or not dist.is_main())
    local = [searcher.search(random_directions(seed, b, min(QUERY_BLOCK, num - b * QUERY_BLOCK), d)) for b in bar]
    mine = np.concatenate(local) if local else np.empty(0, np.int64)
    if dist.world_size() == 1:
        return mine
    device = torch.device("cuda", torch.cuda.current_device()) if _backend_is_nccl() else torch.device("cpu")
    return dist.all_gather_cat(torch.from_numpy(mine).to(device)).cpu().numpy()


def _backend_is_nccl() -> bool:
    import torch.distributed as tdist

    return tdist.get_backend() == "nccl"
