"""The backbone registry: architectures by name, their default options, and the model contract.

    @register_backbone("small_cnn", embedding_size=64, input_size=28, min_input_size=4)
    class SmallCNN(nn.Module): ...

    register_backbone("r50", IResNet, cls=IResNet, blocks=(3, 4, 14, 3), embedding_size=512, input_size=112)

Every module of `facekd.models` is imported at the first lookup, so a new backbone family is one new
file in `facekd/models/` that registers its names. A registered backbone follows the contract
`forward(x (B, 3, H, W) in [-1, 1]) → raw embedding (B, d)` and `forward(x, return_features=True)
→ (embedding, [stage maps (B, C, H, W)])`, and takes `embedding_size` and `input_size`; the
registry-driven tests check every name for output shape, a strict state_dict round trip and ONNX
export.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["ModelSpec", "embedding_dim", "get_model", "list_models", "model_spec", "register_backbone"]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    build: `build(**kw)` makes the model. cls: the class holding the state_dict helpers
        (`config_from_state_dict`, `convert_state_dict`) used by `checkpoint.load_backbone`.
    defaults: keyword arguments of `build` (incl. embedding_size, input_size; None = the class's).
    min_input_size: the smallest input side (or (H, W)) the architecture takes; the registry-driven
        tests run every model at it.
    """

    build: Callable[..., nn.Module]
    cls: type
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    min_input_size: int | tuple[int, int] = 16


_REGISTRY: dict[str, ModelSpec] = {}
_discovered = False


def register_backbone(
    name: str,
    build: Callable[..., nn.Module] | None = None,
    *,
    cls: type | None = None,
    description: str = "",
    min_input_size: int | tuple[int, int] = 16,
    **defaults: Any,
) -> Any:
    """Register `build` (a class or a factory) under `name` with default keyword arguments.

    Without `build`, returns a decorator (for a class or a factory function). `cls` defaults to
    `build` when it is a class; a factory must name the class it returns.
    """

    def add(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        holder = cls if cls is not None else builder
        if not isinstance(holder, type):
            raise ValueError(f"register_backbone({name!r}): give cls= (the class the factory returns)")
        _REGISTRY[name] = ModelSpec(builder, holder, dict(defaults), description, min_input_size)
        return builder

    return add if build is None else add(build)


def _discover() -> None:
    """Import every module of facekd.models once, so that each registers its backbones."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("facekd.models")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"facekd.models.{info.name}")


def list_models() -> list[str]:
    """Names accepted by `get_model`."""
    _discover()
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of `name`; ValueError listing the known names otherwise."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def get_model(
    name: str, embedding_size: int | None = None, input_size: int | tuple[int, int] | None = None, **options: Any
) -> nn.Module:
    """Build backbone `name`. forward(x (B,3,H,W) in [-1,1]) → raw embedding (B, embedding_size);
    forward(x, return_features=True) → (embedding, [stage feature maps]).

    `embedding_size` / `input_size` (int side or (H, W)) default to the architecture's values;
    `options` go to the constructor (e.g. dropout=0.1, last_stride=2, neck_feat="before"), as the
    `model: {options: {...}}` block of a run config does.
    """
    spec = model_spec(name)
    args = dict(spec.defaults)
    if embedding_size is not None:
        args["embedding_size"] = embedding_size
    if input_size is not None:
        args["input_size"] = input_size
    args.update(options)
    try:
        model = spec.build(**args)
    except TypeError as e:
        raise ValueError(f"model {name!r}: bad options {sorted(options)} ({e})") from None
    model.arch = name  # type: ignore[assignment]
    return model


def embedding_dim(model: nn.Module, input_size: int | tuple[int, int]) -> int:
    """Output width d of `model` (B, 3, H, W) → (B, d), probed by one forward of a zero image in eval
    mode (no BatchNorm statistics change; the model's train/eval mode is restored)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = int(model(torch.zeros(1, 3, h, w, device=device)).shape[1])
    model.train(was_training)
    return dim
