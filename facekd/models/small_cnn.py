"""`SmallCNN`: a small 3-stage conv net for 28×28 grey (Fashion-MNIST) or other small images.

Registered as `small_cnn` in `facekd.models` (default embedding 64, input 28). It follows the model
contract (`forward(x)` → embedding, `forward(x, return_features=True)` → (embedding, [stage maps])),
so every distillation loss of `facekd.losses.distiller` applies (L2 on the embedding, FitNet / AT
on the maps, HKD on the logits of a classification task).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_backbone


@register_backbone(
    "small_cnn", description="3-stage CNN for small images", min_input_size=4, embedding_size=64, input_size=28
)
class SmallCNN(nn.Module):
    """Three conv stages (3×3 conv–BN–ReLU, ×2 downsampling in stages 2 and 3), global average
    pooling and a linear embedding layer.

    Input (B, 3, H, W) in [-1, 1] (grey images are repeated to 3 channels by ArrayDataset), any
    H, W (global pooling; `input_size` is accepted for the registry and not used); output embedding
    (B, embedding_size); stage maps (B, w, H, W), (B, 2w, H/2, W/2), (B, 4w, H/4, W/4).
    """

    # `fc` computes the embedding from the pooled last stage map; PAD's variance branch reads
    # that input (facekd.losses.variance.BackboneTap)
    embedding_layer = "fc"

    def __init__(self, embedding_size: int = 64, width: int = 16, in_channels: int = 3, input_size=None):
        super().__init__()

        def stage(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stages = nn.ModuleList(
            [stage(in_channels, width, 1), stage(width, 2 * width, 2), stage(2 * width, 4 * width, 2)]
        )
        self.fc = nn.Linear(4 * width, embedding_size)
        self.embedding_size = embedding_size

    def forward(self, x: torch.Tensor, return_features: bool = False):
        maps = []
        for s in self.stages:
            x = s(x)
            maps.append(x)
        emb = self.fc(x.mean(dim=(2, 3)))
        return (emb, maps) if return_features else emb

    @staticmethod
    def config_from_state_dict(state_dict: dict) -> dict:
        """Infer `embedding_size` and `width` from `fc.weight` and the first conv."""
        out = {}
        if "fc.weight" in state_dict:
            out["embedding_size"] = int(state_dict["fc.weight"].shape[0])
        if "stages.0.0.weight" in state_dict:
            out["width"] = int(state_dict["stages.0.0.weight"].shape[0])
        return out
