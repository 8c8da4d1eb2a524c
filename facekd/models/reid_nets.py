"""Person re-ID backbones: ResNet-50 and ShuffleNetV2 ×0.5, with a BNNeck, written without torchvision.

Key names follow reid-strong-baseline (Luo et al., "Bag of Tricks"): the trunk is `base.*` with
torchvision's own names (`base.conv1`, `base.layer3.5.conv2`, `base.stage2.0.branch2.3`, ...), then
`bottleneck` (BatchNorm1d with its bias frozen at 0: the BNNeck). So

- a reid-strong-baseline state_dict loads directly (its `classifier.*` is the ID head, dropped), and
- a torchvision ImageNet state_dict (top-level `conv1.weight` ..., `fc.*`) is converted by
  `convert_state_dict` (prefix `base.`, drop `fc`); load it with `strict=False` since the neck is new.

Output: the global-average-pooled feature, optionally reduced by a bias-free `reduction` Linear to
`embedding_size` (only when it differs from the trunk width: 2048 / 1024), then the BNNeck.
`neck_feat="after"` (default, reid-strong-baseline's test setting) returns the BN output,
`"before"` the pooled feature; `bnneck=False` drops the BN. `return_features=True` also gives the
four stage outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import register_backbone


# ----------------------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    """torchvision ResNet v1.5 bottleneck: 1×1 → 3×3 (stride) → 1×1 (×4), ReLU after the addition."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class Trunk(nn.Module):
    """A re-ID trunk: forward(x) → (last map, [stage maps]); `out_channels` is the last map's width."""

    out_channels: int


class ResNetTrunk(Trunk):
    """torchvision ResNet (Bottleneck) without avgpool / fc; `last_stride` is layer4's stride."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), last_stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for k, (n, planes, stride) in enumerate(zip(layers, (64, 128, 256, 512), (1, 2, 2, last_stride)), start=1):
            downsample = None
            if stride != 1 or inplanes != planes * 4:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
                )
            blocks = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            blocks += [Bottleneck(inplanes, planes) for _ in range(1, n)]
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
        self.out_channels = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for k in range(1, 5):
            x = getattr(self, f"layer{k}")(x)
            stages.append(x)
        return x, stages


# -------------------------------------------------------------------------------------- ShuffleNetV2
def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class InvertedResidual(nn.Module):
    """torchvision ShuffleNetV2 unit (`branch1` only when stride 2; channel split otherwise)."""

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, bf, 1, bias=False),
                nn.BatchNorm2d(bf),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False),
            nn.BatchNorm2d(bf),
            nn.ReLU(inplace=True),
            nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False),
            nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, bias=False),
            nn.BatchNorm2d(bf),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return _channel_shuffle(out, 2)


class ShuffleNetV2Trunk(Trunk):
    """torchvision ShuffleNetV2 without fc. ×0.5: stage channels (24, 48, 96, 192, 1024), repeats (4, 8, 4)."""

    def __init__(self, repeats: Sequence[int] = (4, 8, 4), channels: Sequence[int] = (24, 48, 96, 192, 1024)):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inp = channels[0]
        for k, (n, oup) in enumerate(zip(repeats, channels[1:4]), start=2):
            units = [InvertedResidual(inp, oup, 2)] + [InvertedResidual(oup, oup, 1) for _ in range(n - 1)]
            setattr(self, f"stage{k}", nn.Sequential(*units))
            inp = oup
        self.conv5 = nn.Sequential(
            nn.Conv2d(inp, channels[4], 1, bias=False), nn.BatchNorm2d(channels[4]), nn.ReLU(inplace=True)
        )
        self.out_channels = channels[4]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.maxpool(self.conv1(x))
        stages = []
        for name in ("stage2", "stage3", "stage4", "conv5"):
            x = getattr(self, name)(x)
            stages.append(x)
        return x, stages


# ---------------------------------------------------------------------------------------- the model
class ReIDNet(nn.Module):
    """Trunk + global average pooling + optional reduction + BNNeck. Output (B, embedding_size).

    Args:
        trunk: a module returning (last map, [stage maps]) with attribute `out_channels`.
        embedding_size: output dim; None or the trunk width means no `reduction` layer.
        bnneck: add the BatchNorm1d neck (`bottleneck`, bias frozen at 0 as in reid-strong-baseline).
        neck_feat: "after" (BN output, default) or "before" (pooled / reduced feature).
    """

    def __init__(self, trunk: Trunk, embedding_size: int | None = None, bnneck: bool = True, neck_feat: str = "after"):
        super().__init__()
        if neck_feat not in ("after", "before"):
            raise ValueError(f"neck_feat must be 'after' or 'before', got {neck_feat!r}")
        self.base = trunk
        width = trunk.out_channels
        self.embedding_size = int(embedding_size or width)
        self.reduction = nn.Linear(width, self.embedding_size, bias=False) if self.embedding_size != width else None
        self.neck_feat = neck_feat
        self.bottleneck = nn.BatchNorm1d(self.embedding_size) if bnneck else None
        if self.bottleneck is not None:
            self.bottleneck.bias.requires_grad_(False)

    @property
    def embedding_layer(self) -> str:
        """The layer computing the embedding from the pooled feature (the `reduction`, else the BNNeck
        when it is applied): PAD's variance branch reads its input. "" when there is none."""
        if self.reduction is not None:
            return "reduction"
        return "bottleneck" if self.bottleneck is not None and self.neck_feat == "after" else ""

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x (B, 3, H, W) → embedding (B, d); with return_features also the four stage outputs."""
        x, stages = self.base(x)
        feat = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        if self.reduction is not None:
            feat = self.reduction(feat)
        if self.bottleneck is not None and self.neck_feat == "after":
            feat = self.bottleneck(feat)
        return (feat, stages) if return_features else feat

    @staticmethod
    def convert_state_dict(state_dict: dict) -> dict:
        """Map foreign key layouts onto ours: torchvision ImageNet (top-level trunk keys + `fc.*`)
        gets the `base.` prefix and loses `fc`; reid-strong-baseline's `classifier.*` is dropped."""
        if any(k.startswith("base.") for k in state_dict):
            return {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        return {f"base.{k}": v for k, v in state_dict.items() if not k.startswith("fc.")}

    @staticmethod
    def config_from_state_dict(state_dict: dict) -> dict:
        """Infer `embedding_size` from the neck or the reduction layer."""
        for key in ("bottleneck.running_mean", "reduction.weight"):
            if key in state_dict:
                return {"embedding_size": int(state_dict[key].shape[0])}
        return {}


@register_backbone(
    "resnet50_reid",
    cls=ReIDNet,
    description="re-ID ResNet-50 + BNNeck",
    min_input_size=(32, 16),
    embedding_size=None,
    input_size=(256, 128),
)
def resnet50_reid(embedding_size: int | None = None, input_size=(256, 128), last_stride: int = 1, **kw) -> ReIDNet:
    """ResNet-50 re-ID net (bag-of-tricks: last stride 1, BNNeck). Any input size (GAP); output 2048-d
    unless `embedding_size` asks for a reduction."""
    return ReIDNet(ResNetTrunk((3, 4, 6, 3), last_stride=last_stride), embedding_size, **kw)


@register_backbone(
    "shufflenet_v2_x0_5",
    cls=ReIDNet,
    description="re-ID ShuffleNetV2 x0.5 + BNNeck",
    min_input_size=(32, 16),
    embedding_size=None,
    input_size=(256, 128),
)
def shufflenet_v2_x0_5(embedding_size: int | None = None, input_size=(256, 128), **kw) -> ReIDNet:
    """ShuffleNetV2 ×0.5 re-ID net with BNNeck; output 1024-d unless `embedding_size` asks for a reduction."""
    return ReIDNet(ShuffleNetV2Trunk(), embedding_size, **kw)
