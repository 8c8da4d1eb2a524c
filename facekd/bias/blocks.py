"""Blocks for all-pairs products (query rows × reference rows) that fit a device's memory.

Exact density and the exact Extrinsic Sampling search both compute Q·Rᵀ for every pair of a
query set Q (n_q, d) and a reference set R (M, d) and reduce each row (a kernel sum, an arg-max).
`plan_blocks` sizes the pieces:
- the reference stays on the device ("resident") while it takes at most half of the memory
  budget; otherwise it is streamed from host memory in blocks of a quarter of the budget (42M ×
  512 float32 is 86 GB: more than one 80 GB card holds), and the query rows are taken in groups
  of another quarter, each group reading the reference once;
- one product block (query_rows × ref_rows float32 cosines) takes `chunk_bytes`: 256 MiB on the
  CPU (where a larger block gains nothing), on CUDA a quarter of the memory the reference leaves,
  up to 4 GiB. The block is full width (ref_rows = all resident rows) while that still leaves at
  least `MIN_QUERY_ROWS` query rows; otherwise it is MIN_QUERY_ROWS × (what fits), so a product
  is never a few rows against millions.
The memory budget defaults to 90 % of the free CUDA memory and is unlimited on the CPU; tests
force a small one to exercise the streamed path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CPU_CHUNK_BYTES",
    "MIN_QUERY_ROWS",
    "BlockPlan",
    "Reference",
    "as_tensor",
    "auto_device",
    "device_memory",
    "plan_blocks",
]

CPU_CHUNK_BYTES = 256 << 20
MAX_CUDA_CHUNK_BYTES = 4 << 30
MIN_QUERY_ROWS = 1024


@dataclass(frozen=True)
class BlockPlan:
    """query_rows × ref_rows per product; `resident`: the whole reference sits on the device."""

    query_rows: int
    ref_rows: int
    resident: bool
    query_group_rows: int  # query rows on the device at once when the reference is streamed


def auto_device(name: str | torch.device) -> torch.device:
    """ "auto" → the current CUDA device when there is one (each torchrun rank's own), else the CPU."""
    if str(name) != "auto":
        return torch.device(name)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def device_memory(device: torch.device) -> int | None:
    """Bytes a computation may use on `device`: 90 % of the free CUDA memory; None (no limit) on CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * 0.9)


def plan_blocks(
    n_query: int,
    n_ref: int,
    d: int,
    *,
    ref_bytes_per_value: int,
    block_bytes_per_value: int = 4,
    device: torch.device,
    chunk_bytes: int | None = None,
    memory_bytes: int | None = None,
) -> BlockPlan:
    """Block sizes for n_query × n_ref products of d-dim rows (see the module docstring).

    ref_bytes_per_value: bytes of one reference value on the device (2 for bf16, 4, 8);
    block_bytes_per_value: bytes of one product value (4: float32 cosines, 8 for float64)."""
    if min(n_query, n_ref, d) <= 0:
        raise ValueError(f"empty product: {n_query} query rows, {n_ref} reference rows, d={d}")
    memory = device_memory(device) if memory_bytes is None else int(memory_bytes)
    ref_bytes = n_ref * d * ref_bytes_per_value
    resident = memory is None or ref_bytes <= memory // 2
    ref_rows = n_ref if memory is None or resident else max(1, (memory // 4) // (d * ref_bytes_per_value))
    if chunk_bytes is None:
        left = None if memory is None else memory - min(ref_bytes, ref_rows * d * ref_bytes_per_value)
        chunk_bytes = CPU_CHUNK_BYTES if left is None else max(1, min(MAX_CUDA_CHUNK_BYTES, left // 4))
    group = n_query if memory is None else max(1, (memory // 4) // (d * ref_bytes_per_value))
    full_width_rows = chunk_bytes // (block_bytes_per_value * ref_rows)
    if full_width_rows >= min(n_query, MIN_QUERY_ROWS):
        return BlockPlan(max(1, min(n_query, full_width_rows)), ref_rows, resident, group)
    query_rows = min(n_query, MIN_QUERY_ROWS)
    ref_rows = max(1, min(ref_rows, chunk_bytes // (block_bytes_per_value * query_rows)))
    return BlockPlan(query_rows, ref_rows, resident, group)


class Reference:
    """The reference rows (M, d) of a product on `device` in `dtype`: moved there once when the
    plan says resident, else kept on the host and copied in block by block (from pinned memory
    when the device is CUDA, so the copy does not stall the host)."""

    def __init__(self, ref: torch.Tensor, plan: BlockPlan, device: torch.device, dtype: torch.dtype):
        self.host, self.plan, self.device, self.dtype = ref, plan, device, dtype
        self.whole = ref.to(device=device, dtype=dtype) if plan.resident else None

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) on the device (a view of the resident reference, or a copy)."""
        if self.whole is not None:
            return self.whole[start:stop]
        block = self.host[start:stop]
        if self.device.type == "cuda":
            block = block.pin_memory()
        return block.to(device=self.device, dtype=self.dtype, non_blocking=True)

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows on the device) over the whole reference, `plan.ref_rows` at a time."""
        for r0 in range(0, self.host.shape[0], self.plan.ref_rows):
            yield r0, self.rows(r0, r0 + self.plan.ref_rows)

    def query_groups(self, start: int, stop: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Query rows [start, stop) of the reference itself, on the device: all at once when the
        reference is resident, else in groups of `plan.query_group_rows`."""
        step = stop - start if self.whole is not None else self.plan.query_group_rows
        for g0 in range(start, stop, max(1, step)):
            yield g0, self.rows(g0, min(g0 + step, stop))


def as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A CPU tensor view of a host array (no copy for a C-contiguous numpy array)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
