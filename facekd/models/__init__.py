"""Backbones by name (`facekd.models.registry`), margin heads (`heads`), checkpoint loading
(`checkpoint`).

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
| sphere20, sphere36 | SphereFace residual CNNs, no BN | 112×96 | 512 |

`embedding_size=None` / `input_size=None` mean the architecture's default above. Each family's
file registers its names with `register_backbone`; a new family is one new file here.
"""

from facekd.models.iresnet import IResNet
from facekd.models.mobilefacenet import MobileFaceNet
from facekd.models.registry import ModelSpec, embedding_dim, get_model, list_models, model_spec, register_backbone
from facekd.models.reid_nets import ReIDNet
from facekd.models.small_cnn import SmallCNN

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
    "register_backbone",
]
