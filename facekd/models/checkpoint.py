"""Loading backbones and class centres from insightface and facekd checkpoints (never plain pickle).

`load_backbone(path, arch_or_model)` (the one loader of backbones in facekd) accepts
- insightface `backbone.pth` / `model.pt`: a plain state_dict (a `module.` prefix is stripped);
- arcface_torch `checkpoint_gpu_{r}.pt` (`state_dict_backbone`);
- facekd's `run_dir/backbone.pth` (plain) and `run_dir/checkpoints/last.pt` (`task` → `student.*`);
- wrappers `{"state_dict": ...}` / `{"model": ...}` with an optional `backbone.` prefix (FaceX-Zoo);
- a directory holding `backbone.pth` or `model.pt`;
- for the re-ID nets, torchvision ImageNet and reid-strong-baseline state_dicts (see reid_nets).

`merge_class_centres(paths_or_dir, num_classes)` rebuilds the full (C, d) class-centre matrix from
insightface's per-rank PartialFC shards.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from facekd.utils import load_torch

from .registry import get_model, model_spec

BACKBONE_FILES = ("backbone.pth", "model.pt")


def _torch_load(path: Path):
    """`facekd.utils.load_torch` (weights_only=True, one line naming the file for any failure)."""
    return load_torch(path, "checkpoint")


def check_finite(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """ValueError naming the first floating-point tensor of `sd` holding NaN or inf (weights of a
    diverged run, or damaged bytes), instead of NaN embeddings later."""
    for name, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{source}: tensor {name!r} {tuple(t.shape)} holds {bad} NaN/inf value(s) of {t.numel()}; "
                "expected finite weights (the checkpoint of a diverged run, or a damaged file)"
            )


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefix(sd: dict, prefix: str) -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def extract_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the backbone state_dict inside a loaded checkpoint object (see module doc for layouts)."""
    if isinstance(obj, dict):
        for key in ("state_dict_backbone", "task", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                sd = extract_state_dict(obj[key], source)
                if key == "task":
                    sd = _strip_prefix(sd, "module.")
                    student = {k[len("student.") :]: v for k, v in sd.items() if k.startswith("student.")}
                    if not student:
                        raise ValueError(f"{source}: 'task' state has no 'student.*' keys (first keys: {list(sd)[:5]})")
                    sd = student
                return _strip_prefix(sd, "backbone.")
        if _is_state_dict(obj):
            return _strip_prefix(obj, "module.")
    kind = f"dict with keys {list(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"{source}: no backbone state_dict found (got {kind}); expected a plain state_dict or "
        "one under 'state_dict_backbone' / 'task' / 'state_dict' / 'model'"
    )


def resolve_backbone_path(path: str | os.PathLike) -> Path:
    """A file as is; a directory → its backbone.pth or model.pt. FileNotFoundError otherwise."""
    path = Path(path)
    if path.is_dir():
        for name in BACKBONE_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: directory holds none of {', '.join(BACKBONE_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    return path


def _short(keys: Sequence[str], n: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def load_state_dict_checked(model: nn.Module, sd: dict, strict: bool = True, source: str = "checkpoint") -> None:
    """`model.load_state_dict(sd)` with clear errors: shape mismatches always raise; missing /
    unexpected keys raise when `strict` (else a warning); nothing matching at all always raises."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if shapes:
        raise ValueError(f"{source}: {len(shapes)} shape mismatches, e.g. {_short(shapes, 3)}")
    if len(missing) == len(own):
        raise ValueError(
            f"{source}: no key matches the model (checkpoint keys: {_short(list(sd))}; model keys: {_short(list(own))})"
        )
    if strict and (missing or unexpected):
        raise ValueError(
            f"{source}: state_dict does not match the model: "
            f"{len(missing)} missing ({_short(missing)}), {len(unexpected)} unexpected ({_short(unexpected)})"
        )
    if missing or unexpected:
        warnings.warn(
            f"{source}: loaded non-strictly: {len(missing)} missing ({_short(missing)}), "
            f"{len(unexpected)} unexpected ({_short(unexpected)})",
            stacklevel=3,
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def load_backbone(path: str | os.PathLike, arch: str | nn.Module, strict: bool = True, **model_kw) -> nn.Module:
    """Load backbone weights from `path` (any layout of the module doc); returns the model in eval mode.

    `arch` is a model name (facekd.models.list_models()), built here on CPU, or an already-built
    `nn.Module` (e.g. a ReFO student with a projection), loaded in place and returned. With a name,
    `embedding_size` / `input_size` are inferred from the checkpoint (fc / GDC / neck shapes) unless
    given in `model_kw` (`model_kw` must be empty with a module). `strict=False` tolerates missing /
    unexpected keys (e.g. an ImageNet trunk for a re-ID net, whose neck is new) but still refuses
    shape mismatches.
    """
    file = resolve_backbone_path(path)
    sd = extract_state_dict(_torch_load(file), str(file))
    check_finite(sd, str(file))
    if isinstance(arch, nn.Module):
        if model_kw:
            raise ValueError(f"load_backbone({file}): model options {sorted(model_kw)} apply only when arch is a name")
        model, name, cls = arch, type(arch).__name__, type(arch)
    else:
        model, name, cls = None, arch, model_spec(arch).cls
    convert = getattr(cls, "convert_state_dict", None)
    if convert is not None:
        sd = convert(sd)
    if model is None:
        assert isinstance(arch, str)
        infer = getattr(cls, "config_from_state_dict", None)
        model = get_model(arch, **{**(infer(sd) if infer else {}), **model_kw})
    load_state_dict_checked(model, sd, strict=strict, source=f"{file} (arch {name})")
    return model.eval()


# ------------------------------------------------------------------------------ class centres
_RANK_FILE = re.compile(r"^rank_(\d+)_softmax_weight\.pt$")
_GPU_FILE = re.compile(r"^checkpoint_gpu_(\d+)\.pt$")


def partial_fc_partition(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """PartialFC's shard of rank r: (class_start, num_local) with num_local = C//W + (r < C%W)."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + (1 if rank < extra else 0)


def _rank_of(path: Path) -> int | None:
    m = _RANK_FILE.match(path.name) or _GPU_FILE.match(path.name)
    return int(m.group(1)) if m else None


def _shard_tensor(path: Path) -> torch.Tensor:
    obj = _torch_load(path)
    if isinstance(obj, torch.Tensor):
        return obj
    if (
        isinstance(obj, dict)
        and isinstance(obj.get("state_dict_softmax_fc"), dict)
        and "weight" in obj["state_dict_softmax_fc"]
    ):
        return obj["state_dict_softmax_fc"]["weight"]
    if isinstance(obj, dict) and isinstance(obj.get("weight"), torch.Tensor):
        return obj["weight"]
    kind = f"dict with keys {list(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"{path}: expected a class-centre tensor or a dict with state_dict_softmax_fc['weight'], got {kind}"
    )


def merge_class_centres(
    paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike], num_classes: int
) -> torch.Tensor:
    """Concatenate PartialFC class-centre shards in rank order into a (C, d) float32 tensor.

    Accepts a directory (uses `rank_{r}_softmax_weight.pt`, else `checkpoint_gpu_{r}.pt`; the
    `_mom` momentum files are ignored) or a list of files (rank read from the name when it follows
    one of those patterns, else the list order). Checks that the ranks are 0..W-1 and that rank r
    holds num_local = C//W + (r < C%W) rows of the same width.
    """
    if isinstance(paths_or_dir, (str, os.PathLike)) and Path(paths_or_dir).is_dir():
        folder = Path(paths_or_dir)
        paths = sorted(p for p in folder.iterdir() if _RANK_FILE.match(p.name))
        if not paths:
            paths = sorted(p for p in folder.iterdir() if _GPU_FILE.match(p.name))
        if not paths:
            raise FileNotFoundError(f"{folder}: no rank_{{r}}_softmax_weight.pt or checkpoint_gpu_{{r}}.pt files")
    elif isinstance(paths_or_dir, (str, os.PathLike)):
        paths = [Path(paths_or_dir)]
    else:
        paths = [Path(p) for p in paths_or_dir]
    if not paths:
        raise ValueError("merge_class_centres: no shard files given")
    ranks = [r for r in (_rank_of(p) for p in paths) if r is not None]
    if len(ranks) == len(paths):
        order = sorted(range(len(paths)), key=lambda i: ranks[i])
        paths = [paths[i] for i in order]
        found = sorted(ranks)
        if found != list(range(len(paths))):
            raise ValueError(
                f"shard ranks must be 0..{len(paths) - 1} exactly once, found {found} in {paths[0].parent}"
            )
    world = len(paths)
    shards: list[torch.Tensor] = []
    for r, p in enumerate(paths):
        w = _shard_tensor(p)
        _, num_local = partial_fc_partition(num_classes, world, r)
        if w.ndim != 2 or w.shape[0] != num_local:
            raise ValueError(
                f"{p}: rank {r} of {world} with {num_classes} classes should hold ({num_local}, d) "
                f"centres (num_local = C//W + (r < C%W)), got {tuple(w.shape)}"
            )
        if shards and w.shape[1] != shards[0].shape[1]:
            raise ValueError(f"{p}: centre width {w.shape[1]} differs from rank 0's {shards[0].shape[1]}")
        shards.append(w.float())
    return torch.cat(shards)
