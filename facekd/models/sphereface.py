"""SphereFace's residual CNNs ("SphereFace: Deep Hypersphere Embedding for Face Recognition", Liu et
al., CVPR 2017, arXiv 1704.08063): the 20- and 36-layer networks of its Table 2.

    stage k (k = 1..4, widths 64 / 128 / 256 / 512): 3×3 conv stride 2 + PReLU, then `units[k]`
        residual units [3×3 conv + PReLU, 3×3 conv + PReLU] + identity
    flatten → fc (Linear widths[3]·h·w → d)

sphere20 has units (1, 2, 4, 1), sphere36 (2, 4, 8, 2); the paper's input is 112×96 (h, w = the
input halved four times, rounding up: 7×6). There is no batch normalisation, as in the paper; convs
use Xavier-uniform initialisation and PReLU starts at 0.25. `forward(x, return_features=True)` also
returns the four stage outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import final_spatial, pair
from .registry import register_backbone


def _conv_prelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.PReLU(cout))


class SphereUnit(nn.Module):
    """x + PReLU(conv(PReLU(conv(x)))) with 3×3 convolutions of constant width."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(_conv_prelu(width, width), _conv_prelu(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SphereNet(nn.Module):
    """SphereFace CNN. Input (B, 3, H, W) in [-1, 1]; output the raw embedding (B, embedding_size).

    Args:
        units: residual units per stage, e.g. (1, 2, 4, 1) for sphere20.
        widths: channels of the four stages.
        embedding_size: output dimension d.
        input_size: side or (H, W) of the input; fixes the input width of `fc`.
    """

    # `fc` computes the embedding from the flattened last stage map; PAD's variance branch reads
    # that input (facekd.losses.variance.BackboneTap)
    embedding_layer = "fc"

    def __init__(
        self,
        units: Sequence[int] = (1, 2, 4, 1),
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        input_size: int | Sequence[int] = (112, 96),
    ):
        super().__init__()
        if len(units) != 4 or len(widths) != 4 or min(units) < 0:
            raise ValueError(f"SphereNet needs 4 stages, got units={units}, widths={widths}")
        self.input_size = pair(input_size)
        self.embedding_size = int(embedding_size)
        cin, stages = 3, []
        for n, w in zip(units, widths):
            stages.append(nn.Sequential(_conv_prelu(cin, w, stride=2), *[SphereUnit(w) for _ in range(n)]))
            cin = w
        self.stages = nn.ModuleList(stages)
        h, w = final_spatial(self.input_size, 4)
        self.fc = nn.Linear(widths[3] * h * w, embedding_size)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x (B, 3, H, W) → embedding (B, d); with return_features also the four stage outputs."""
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        emb = self.fc(torch.flatten(x, 1))
        return (emb, maps) if return_features else emb

    @staticmethod
    def config_from_state_dict(state_dict: dict) -> dict:
        """Infer `embedding_size` from `fc.weight` (the input size cannot be told from it alone)."""
        fc = state_dict.get("fc.weight")
        return {} if fc is None else {"embedding_size": int(fc.shape[0])}


for _name, _units in {"sphere20": (1, 2, 4, 1), "sphere36": (2, 4, 8, 2)}.items():
    register_backbone(
        _name,
        SphereNet,
        description=f"SphereFace residual CNN, units {_units}, no BN",
        units=_units,
        embedding_size=512,
        input_size=(112, 96),
    )
