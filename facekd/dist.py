"""torch.distributed helpers: one place that knows about RANK / WORLD_SIZE (torchrun) and backends.

Everything works unchanged in a single process: `rank()` is 0, `world_size()` is 1, and the
collectives return their input.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Initialise the default process group when launched by torchrun; return True if distributed.

    Backend: NCCL when CUDA is available, gloo otherwise (CPU runs and the tests).
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" → the local CUDA device when available (LOCAL_RANK under torchrun), else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def min_over_ranks(value: int) -> int:
    """The smallest of `value` over all ranks (the value itself in a single process)."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_true(flag: bool) -> bool:
    """True when `flag` is true on every rank (so that all ranks take the same branch)."""
    return bool(min_over_ranks(int(bool(flag))))


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (first dim may differ per rank) from all ranks, in rank order."""
    if not is_distributed():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    rows = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(rows), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    chunks = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(chunks, padded)
    return torch.cat([c[:n] for c, n in zip(chunks, rows)])


def shard_range(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Contiguous [start, stop) of `n` rows owned by rank r of w (balanced, rank order)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    start = base * r + min(r, extra)
    return start, start + base + (1 if r < extra else 0)
