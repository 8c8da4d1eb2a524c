"""MobileFaceNet with insightface arcface_torch's exact module names (`backbones/mobilefacenet.py`).

Building blocks (each holds an `nn.Sequential` called `layers`):
    ConvBlock   = [Conv2d (no bias), BN2d, PReLU]
    LinearBlock = [Conv2d (no bias), BN2d]
    DepthWise   = [ConvBlock 1×1 (c → g), ConvBlock depthwise 3×3 (g, groups g, stride), LinearBlock 1×1 (g → c')]
                  (+ identity when residual)
    Residual    = [DepthWise(residual=True)] × n
    GDC         = [LinearBlock depthwise k×k (k = final spatial size, 7 at 112 px), Flatten,
                   Linear(sep_width → d, no bias), BatchNorm1d(d)]

`mbf` = blocks (1, 4, 6, 2), scale 2, i.e. `layers`:
    0 ConvBlock 3→128 s2 | 1 ConvBlock 128→128 groups 64 | 2 DepthWise s2 (g 128) | 3 Residual×4 (g 128)
    4 DepthWise →256 s2 (g 256) | 5 Residual×6 (g 256) | 6 DepthWise s2 (g 512) | 7 Residual×2 (g 256)
then `conv_sep` (ConvBlock 256→512, 1×1) and `features` (GDC). `mbf_large` = blocks (2, 8, 12, 4), scale 4.

Generalisations for the small demo student (defaults reproduce insightface): `widths` (the two
trunk widths, 64·scale and 128·scale), `hidden` (the expansion width g of layers 1..7),
`stem_groups`, `sep_width`, and any input size (GDC kernel = input side halved four times).
`forward(x, return_features=True)` also returns the outputs after layers 1, 3, 5 and `conv_sep`
(the four resolutions 56/28/14/7 at 112 px, like iresnet's layer1..layer4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import final_spatial, pair
from .registry import register_backbone


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1×1 expand to `groups` channels, depthwise 3×3, 1×1 linear projection."""

    def __init__(self, cin: int, cout: int, residual: bool = False, stride: int = 2, groups: int = 1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, groups),
            ConvBlock(groups, groups, kernel=(3, 3), stride=(stride, stride), padding=(1, 1), groups=groups),
            LinearBlock(groups, cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    def __init__(self, c: int, num_block: int, groups: int):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, residual=True, stride=1, groups=groups) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: (B, c, k, k) → (B, d)."""

    def __init__(self, channels: int, embedding_size: int, kernel: tuple[int, int]):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel=kernel, groups=channels),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet. Input (B, 3, H, W) in [-1, 1]; output the raw embedding (B, embedding_size).

    Args:
        blocks: residual blocks in layers 1 (1 → a grouped ConvBlock instead), 3, 5, 7.
        scale: trunk width multiplier (widths 64·scale and 128·scale) unless `widths` is given.
        widths: explicit (c1, c2) trunk widths.
        hidden: expansion widths g of layers 1..7 (insightface: 128, 128, 128, 256, 256, 512, 256).
        stem_groups: groups of layers.1 when blocks[0] == 1 (insightface: 64).
        sep_width: output channels of `conv_sep` (insightface: 512).
    """

    # `features` computes the embedding from the conv_sep map (the GDC head); PAD's variance branch reads
    # that input (facekd.losses.variance.BackboneTap)
    embedding_layer = "features"

    def __init__(
        self,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        embedding_size: int = 512,
        input_size: int | Sequence[int] = 112,
        widths: Sequence[int] | None = None,
        hidden: Sequence[int] = (128, 128, 128, 256, 256, 512, 256),
        stem_groups: int = 64,
        sep_width: int = 512,
    ):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1 or len(hidden) != 7:
            raise ValueError(f"MobileFaceNet needs 4 block counts ≥1 and 7 hidden widths, got {blocks}, {hidden}")
        c1, c2 = widths if widths is not None else (64 * scale, 128 * scale)
        self.input_size = pair(input_size)
        self.embedding_size = int(embedding_size)
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, kernel=(3, 3), padding=(1, 1), groups=stem_groups))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=hidden[0]))
        self.layers.extend(
            [
                DepthWise(c1, c1, stride=2, groups=hidden[1]),
                Residual(c1, blocks[1], groups=hidden[2]),
                DepthWise(c1, c2, stride=2, groups=hidden[3]),
                Residual(c2, blocks[2], groups=hidden[4]),
                DepthWise(c2, c2, stride=2, groups=hidden[5]),
                Residual(c2, blocks[3], groups=hidden[6]),
            ]
        )
        self.conv_sep = ConvBlock(c2, sep_width)
        self.features = GDC(sep_width, embedding_size, final_spatial(self.input_size, 4))
        self._init_weights()

    def _init_weights(self) -> None:
        # insightface's initialisation: kaiming fan_out for conv and linear, BN2d weight 1 / bias 0
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x (B, 3, H, W) → embedding (B, d); with return_features also the outputs after
        layers.1, layers.3, layers.5 and conv_sep."""
        stages = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in (1, 3, 5):
                stages.append(x)
        x = self.conv_sep(x)
        stages.append(x)
        emb = self.features(x)
        return (emb, stages) if return_features else emb

    @staticmethod
    def config_from_state_dict(state_dict: dict) -> dict:
        """Infer `embedding_size` and (square) `input_size` from a state_dict."""
        gdc = state_dict.get("features.layers.0.layers.0.weight")
        bn = state_dict.get("features.layers.3.running_mean")
        if gdc is None or bn is None:
            return {}
        cfg = {"embedding_size": int(bn.shape[0])}
        if gdc.shape[-1] == gdc.shape[-2]:
            cfg["input_size"] = int(gdc.shape[-1]) * 16
        return cfg


register_backbone(
    "mbf",
    MobileFaceNet,
    description="insightface MobileFaceNet",
    blocks=(1, 4, 6, 2),
    scale=2,
    embedding_size=512,
    input_size=112,
)
register_backbone(
    "mbf_large",
    MobileFaceNet,
    description="insightface MobileFaceNet large",
    blocks=(2, 8, 12, 4),
    scale=4,
    embedding_size=512,
    input_size=112,
)
register_backbone(
    "mbf_tiny",
    MobileFaceNet,
    description="demo student: narrow MobileFaceNet (~0.2M params)",
    blocks=(1, 2, 2, 1),
    widths=(32, 64),
    hidden=(32, 64, 64, 128, 128, 128, 128),
    stem_groups=16,
    sep_width=128,
    embedding_size=512,
    input_size=32,
)
