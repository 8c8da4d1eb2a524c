"""IResNet (ArcFace's "improved ResNet"), with insightface arcface_torch's exact module names.

Structure and state_dict keys match `recognition/arcface_torch/backbones/iresnet.py`, so a released
insightface `backbone.pth` / `model.pt` loads with `strict=True`:

    conv1 (3→w0, 3×3, s1) → bn1 → prelu
    layer1..layer4: IBasicBlock × blocks[k], width widths[k], the first block of every stage has
                    stride 2 (112 → 56 → 28 → 14 → 7) and a `downsample` = [1×1 conv s2, BN2d]
        IBasicBlock: bn1 → conv1 3×3 → bn2 → prelu → conv2 3×3 (carries the stride) → bn3, + identity
                     (no activation after the addition)
    bn2 (BN2d) → flatten → dropout (p=0 by default) → fc (Linear widths[3]·h·w → d, bias)
    → features (BatchNorm1d(d), weight fixed at 1 and not trained; still in the state_dict)

`fc` and `features` run in float32 even under autocast, as arcface_torch does.

Differences from insightface (all backwards compatible): any input size (h, w = the input side
halved four times, rounding up; 112 → 7), configurable stage widths (for the small demo nets), and
`forward(x, return_features=True)` returning the four stage outputs as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import final_spatial, pair
from .registry import register_backbone


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style basic block: bn1 → conv1 → bn2 → prelu → conv2(stride) → bn3 (+ shortcut)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet backbone. Input (B, 3, H, W) in [-1, 1]; output the raw embedding (B, embedding_size).

    Args:
        blocks: IBasicBlocks per stage, e.g. [3, 4, 14, 3] for r50.
        widths: channels of the four stages; the stem has widths[0] channels (insightface: 64).
        embedding_size: output dimension d.
        input_size: side (or (H, W)) of the input; fixes the input width of `fc`.
        dropout: dropout probability before `fc` (insightface default 0).
    """

    # `fc` computes the embedding from the flattened last stage map (after bn2 and dropout); PAD's variance branch reads
    # that input (facekd.losses.variance.BackboneTap)
    embedding_layer = "fc"

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        input_size: int | Sequence[int] = 112,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(blocks) != 4 or len(widths) != 4 or min(blocks) < 1:
            raise ValueError(f"IResNet needs 4 stages with ≥1 block each, got blocks={blocks}, widths={widths}")
        self.input_size = pair(input_size)
        self.embedding_size = int(embedding_size)
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for k, (n, w) in enumerate(zip(blocks, widths), start=1):
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, w, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(w, eps=1e-05)
            )
            layer = [IBasicBlock(inplanes, w, stride=2, downsample=downsample)]
            layer += [IBasicBlock(w, w) for _ in range(1, n)]
            setattr(self, f"layer{k}", nn.Sequential(*layer))
            inplanes = w
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        h, w = final_spatial(self.input_size, 4)
        self.fc = nn.Linear(widths[3] * h * w, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-05)
        self._init_weights()

    def _init_weights(self) -> None:
        # insightface's initialisation: conv N(0, 0.1), BN weight 1 / bias 0, frozen `features` weight
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x (B, 3, H, W) → embedding (B, d); with return_features also [layer1..layer4 outputs]."""
        x = self.prelu(self.bn1(self.conv1(x)))
        stages = []
        for k in range(1, 5):
            x = getattr(self, f"layer{k}")(x)
            stages.append(x)
        x = torch.flatten(self.bn2(x), 1)
        x = self.dropout(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            emb = self.features(self.fc(x.float()))
        return (emb, stages) if return_features else emb

    @staticmethod
    def config_from_state_dict(state_dict: dict) -> dict:
        """Infer `embedding_size` and (square) `input_size` from a state_dict (for checkpoint loading)."""
        fc = state_dict.get("fc.weight")
        last = state_dict.get("bn2.weight")
        if fc is None or last is None:
            return {}
        d, fan_in = fc.shape
        cells = fan_in // last.shape[0]
        side = round(cells**0.5)
        cfg = {"embedding_size": int(d)}
        if side * side == cells and side * last.shape[0] == fan_in // side:
            cfg["input_size"] = side * 16
        return cfg


_INSIGHTFACE_BLOCKS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
for _name, _blocks in _INSIGHTFACE_BLOCKS.items():
    register_backbone(
        _name, IResNet, description=f"insightface IResNet {_blocks}", blocks=_blocks, embedding_size=512, input_size=112
    )
register_backbone(
    "iresnet_tiny",
    IResNet,
    description="demo teacher: IResNet widths 16/32/64/128, blocks 2/2/2/2 (~1.0M params)",
    blocks=(2, 2, 2, 2),
    widths=(16, 32, 64, 128),
    embedding_size=512,
    input_size=32,
)
register_backbone(
    "iresnet_mini",
    IResNet,
    description="small IResNet student: widths 8/16/32/64, blocks 1/1/1/1 (~0.2M params)",
    blocks=(1, 1, 1, 1),
    widths=(8, 16, 32, 64),
    embedding_size=512,
    input_size=32,
)
