"""Image transforms on tensors (a few lines of torch; facekd never depends on torchvision).

Images follow the dataset contract: float32 `(3, H, W)` or batched `(B, 3, H, W)`, RGB, in
[-1, 1] = (x/255 - 0.5) / 0.5 (insightface's normalisation).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalize(img_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) tensor of any shape → float32 in [-1, 1]: x/127.5 - 1."""
    return img_uint8.float().div(127.5).sub(1.0)


def denormalize(img: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize`: float in [-1, 1] → uint8 in [0, 255] (rounded, clipped)."""
    return img.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def to_numpy_hwc(img: torch.Tensor) -> np.ndarray:
    """float (3, H, W) or (B, 3, H, W) in [-1, 1] → uint8 (H, W, 3) or (B, H, W, 3) numpy, for viewing."""
    if img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got shape {tuple(img.shape)}")
    return denormalize(img.detach().cpu()).movedim(-3, -1).numpy()


def hflip(img: torch.Tensor) -> torch.Tensor:
    """Mirror left-right: (…, H, W) → (…, H, W) with the last axis reversed."""
    return torch.flip(img, dims=(-1,))


def random_hflip(img: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip `img` left-right with probability `p`.

    (3, H, W): one coin for the image. (B, 3, H, W): one independent coin per image.
    Randomness comes from `generator` (torch's global generator when None, which the
    DataLoader seeds per worker).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {p}")
    if img.dim() == 3:
        return hflip(img) if torch.rand((), generator=generator).item() < p else img
    if img.dim() == 4:
        flip = torch.rand(img.shape[0], generator=generator) < p
        out = img.clone()
        out[flip] = hflip(img[flip])
        return out
    raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got shape {tuple(img.shape)}")


def resize(img: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize (C, H, W) or (B, C, H, W) float images to `size` (square int or (H, W)).

    Bilinear with antialiasing when shrinking (like PIL), `align_corners=False`.
    """
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if img.dim() == 3:
        return resize(img[None], hw)[0]
    if img.dim() != 4:
        raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(img.shape)}")
    if tuple(img.shape[-2:]) == hw:
        return img
    return F.interpolate(img.float(), size=hw, mode="bilinear", align_corners=False, antialias=True)
