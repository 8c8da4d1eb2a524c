"""Backbones by name (a tiny timm-style registry).

    model = get_model("r50")                 # insightface-exact IResNet-50, 112 px, 512-d
    emb = model(x)                           # (B, 512) raw embedding
    emb, maps = model(x, return_features=True)

| name | what | default input | default d |
|---|---|---|---|
| r18 r34 r50 r100 r200 | insightface IResNet (exact keys) | 112 | 512 |
| mbf, mbf_large | insightface MobileFaceNet (exact keys) | 112 | 512 |
| iresnet_tiny | demo teacher: IResNet widths 16/32/64/128, blocks 2/2/2/2 (~1.0M params) | 32 | 512 |
| iresnet_mini | small IResNet student: widths 8/16/32/64, blocks 1/1/1/1 (~0.2M) | 32 | 512 |
| mbf_tiny | demo student: narrow MobileFaceNet (~0.2M) | 32 | 512 |
| resnet50_reid | torchvision-named ResNet-50, last stride 1, BNNeck | 256×128 | 2048 |
| shufflenet_v2_x0_5 | torchvision-named ShuffleNetV2 ×0.5, BNNeck | 256×128 | 1024 |
| small_cnn | 3-stage CNN for small images (Fashion-MNIST; width 16, any size) | 28 | 64 |

`embedding_size=None` / `input_size=None` mean the architecture's default above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .iresnet import IResNet
from .mobilefacenet import MobileFaceNet
from .reid_nets import ReIDNet, resnet50_reid, shufflenet_v2_x0_5
from .small_cnn import SmallCNN


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: `build(**kw)` makes the model; `cls` provides the state_dict helpers."""

    build: Callable[..., nn.Module]
    cls: type
    defaults: dict = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, build: Callable[..., nn.Module], cls: type, description: str = "", **defaults) -> None:
    """Add an architecture; `defaults` are keyword arguments of `build` (incl. embedding_size, input_size)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(build, cls, defaults, description)


def list_models() -> list[str]:
    """Names accepted by `get_model`."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of `name`; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def get_model(name: str, embedding_size: int | None = None, input_size=None, **kw) -> nn.Module:
    """Build backbone `name`. forward(x (B,3,H,W) in [-1,1]) → raw embedding (B, embedding_size);
    forward(x, return_features=True) → (embedding, [stage feature maps]).

    `embedding_size` / `input_size` (int side or (H, W)) default to the architecture's values;
    other keywords go to the constructor (e.g. dropout=0.1, last_stride=2, neck_feat="before").
    """
    spec = model_spec(name)
    args = dict(spec.defaults)
    if embedding_size is not None:
        args["embedding_size"] = embedding_size
    if input_size is not None:
        args["input_size"] = input_size
    args.update(kw)
    model = spec.build(**args)
    model.arch = name
    return model


_IRESNET_BLOCKS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
for _name, _blocks in _IRESNET_BLOCKS.items():
    register_model(
        _name, IResNet, IResNet, f"insightface IResNet {_blocks}", blocks=_blocks, embedding_size=512, input_size=112
    )
register_model(
    "mbf",
    MobileFaceNet,
    MobileFaceNet,
    "insightface MobileFaceNet",
    blocks=(1, 4, 6, 2),
    scale=2,
    embedding_size=512,
    input_size=112,
)
register_model(
    "mbf_large",
    MobileFaceNet,
    MobileFaceNet,
    "insightface MobileFaceNet large",
    blocks=(2, 8, 12, 4),
    scale=4,
    embedding_size=512,
    input_size=112,
)
register_model(
    "iresnet_tiny",
    IResNet,
    IResNet,
    "demo teacher",
    blocks=(2, 2, 2, 2),
    widths=(16, 32, 64, 128),
    embedding_size=512,
    input_size=32,
)
register_model(
    "iresnet_mini",
    IResNet,
    IResNet,
    "small IResNet student",
    blocks=(1, 1, 1, 1),
    widths=(8, 16, 32, 64),
    embedding_size=512,
    input_size=32,
)
register_model(
    "mbf_tiny",
    MobileFaceNet,
    MobileFaceNet,
    "demo student",
    blocks=(1, 2, 2, 1),
    widths=(32, 64),
    hidden=(32, 64, 64, 128, 128, 128, 128),
    stem_groups=16,
    sep_width=128,
    embedding_size=512,
    input_size=32,
)
register_model(
    "resnet50_reid", resnet50_reid, ReIDNet, "re-ID ResNet-50 + BNNeck", embedding_size=None, input_size=(256, 128)
)
register_model(
    "shufflenet_v2_x0_5",
    shufflenet_v2_x0_5,
    ReIDNet,
    "re-ID ShuffleNetV2 x0.5 + BNNeck",
    embedding_size=None,
    input_size=(256, 128),
)
register_model("small_cnn", SmallCNN, SmallCNN, "3-stage CNN for small images", embedding_size=64, input_size=28)

__all__ = [
    "IResNet",
    "MobileFaceNet",
    "ModelSpec",
    "ReIDNet",
    "SmallCNN",
    "embedding_dim",
    "get_model",
    "list_models",
    "model_spec",
    "register_model",
]


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
