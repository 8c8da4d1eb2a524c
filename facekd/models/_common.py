"""Small helpers shared by the backbone files (input-size arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """`112` or `(112, 112)` → `(112, 112)`; raises ValueError on anything else."""
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be a positive int or (H, W), got {size}")
    return size


def final_spatial(size: int | Sequence[int], n_stride2: int) -> tuple[int, int]:
    """Spatial (H, W) after `n_stride2` stride-2 convolutions with 'same' padding (ceil(n / 2) each)."""
    h, w = pair(size)
    for _ in range(n_stride2):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w
