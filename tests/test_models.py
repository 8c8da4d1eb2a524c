"""Backbones: insightface-exact key lists and shapes (generated here from the spec), any input size,
stage features, demo nets, re-ID nets with torchvision names."""

import pytest
import torch

from facekd.models import get_model, list_models

torch.set_num_threads(1)


def _bn2d(prefix, c):
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def expected_iresnet(blocks, widths=(64, 128, 256, 512), emb=512, spatial=7):
    """Keys and shapes of arcface_torch's IResNet, written from the spec (face-ecosystem.md §1.5)."""
    keys = [("conv1.weight", (widths[0], 3, 3, 3)), *_bn2d("bn1", widths[0]), ("prelu.weight", (widths[0],))]
    cin = widths[0]
    for k, (n, w) in enumerate(zip(blocks, widths), start=1):
        for i in range(n):
            p = f"layer{k}.{i}"
            keys += [*_bn2d(f"{p}.bn1", cin), (f"{p}.conv1.weight", (w, cin, 3, 3)), *_bn2d(f"{p}.bn2", w)]
            keys += [(f"{p}.prelu.weight", (w,)), (f"{p}.conv2.weight", (w, w, 3, 3)), *_bn2d(f"{p}.bn3", w)]
            if i == 0:
                keys += [(f"{p}.downsample.0.weight", (w, cin, 1, 1)), *_bn2d(f"{p}.downsample.1", w)]
            cin = w
    keys += _bn2d("bn2", widths[3])
    keys += [("fc.weight", (emb, widths[3] * spatial * spatial)), ("fc.bias", (emb,))]
    keys += [(k.replace("bn", "features", 1), s) for k, s in _bn2d("bn", emb)]
    return keys


def expected_mbf(blocks=(1, 4, 6, 2), scale=2, emb=512):
    """Keys and shapes of arcface_torch's MobileFaceNet, from the spec (face-ecosystem.md §1.5)."""

    def conv_block(p, cin, cout, k, groups=1, prelu=True):
        out = [(f"{p}.layers.0.weight", (cout, cin // groups, k, k)), *_bn2d(f"{p}.layers.1", cout)]
        return out + ([(f"{p}.layers.2.weight", (cout,))] if prelu else [])

    def depthwise(p, cin, cout, g):
        return (
            conv_block(f"{p}.layers.0", cin, g, 1)
            + conv_block(f"{p}.layers.1", g, g, 3, groups=g)
            + conv_block(f"{p}.layers.2", g, cout, 1, prelu=False)
        )

    c1, c2 = 64 * scale, 128 * scale
    keys = conv_block("layers.0", 3, c1, 3)
    if blocks[0] == 1:
        keys += conv_block("layers.1", c1, c1, 3, groups=64)
    else:
        for i in range(blocks[0]):
            keys += depthwise(f"layers.1.layers.{i}", c1, c1, 128)
    keys += depthwise("layers.2", c1, c1, 128)
    keys += [key for i in range(blocks[1]) for key in depthwise(f"layers.3.layers.{i}", c1, c1, 128)]
    keys += depthwise("layers.4", c1, c2, 256)
    keys += [key for i in range(blocks[2]) for key in depthwise(f"layers.5.layers.{i}", c2, c2, 256)]
    keys += depthwise("layers.6", c2, c2, 512)
    keys += [key for i in range(blocks[3]) for key in depthwise(f"layers.7.layers.{i}", c2, c2, 256)]
    keys += conv_block("conv_sep", c2, 512, 1)
    keys += conv_block("features.layers.0", 512, 512, 7, groups=512, prelu=False)
    keys += [("features.layers.2.weight", (emb, 512)), *_bn2d("features.layers.3", emb)]
    return keys


def _keys(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.slow
def test_r50_keys_exact():
    m = get_model("r50")
    assert _keys(m) == expected_iresnet((3, 4, 14, 3))
    sd = m.state_dict()
    assert len(sd) == 475
    assert tuple(sd["layer3.13.conv2.weight"].shape) == (256, 256, 3, 3)
    assert "layer1.0.downsample.1.running_mean" in sd and "features.num_batches_tracked" in sd
    assert tuple(sd["fc.weight"].shape) == (512, 25088) and tuple(sd["fc.bias"].shape) == (512,)
    assert not m.features.weight.requires_grad and torch.all(m.features.weight == 1)
    assert sum(p.numel() for p in m.parameters()) == 43_590_848
    fresh = get_model("r50")
    fresh.load_state_dict(sd, strict=True)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in sd.items())


@pytest.mark.slow
@pytest.mark.parametrize("name,blocks", [("r18", (2, 2, 2, 2)), ("r34", (3, 4, 6, 3))])
def test_small_iresnets_keys(name, blocks):
    assert _keys(get_model(name)) == expected_iresnet(blocks)


def test_mbf_keys_exact():
    m = get_model("mbf")
    assert _keys(m) == expected_mbf()
    sd = m.state_dict()
    assert tuple(sd["layers.3.layers.2.layers.1.layers.2.weight"].shape) == (128,)
    assert tuple(sd["conv_sep.layers.2.weight"].shape) == (512,)
    assert tuple(sd["features.layers.3.running_mean"].shape) == (512,)
    assert tuple(sd["features.layers.0.layers.0.weight"].shape) == (512, 1, 7, 7)
    assert "features.layers.2.bias" not in sd
    get_model("mbf").load_state_dict(sd, strict=True)
    assert _keys(get_model("mbf_large")) == expected_mbf((2, 8, 12, 4), scale=4)


@pytest.mark.slow
def test_iresnet_exact_forward_112_and_features():
    m = get_model("r18", embedding_size=128).eval()
    emb, maps = m(torch.randn(2, 3, 112, 112), return_features=True)
    assert emb.shape == (2, 128)
    assert [tuple(f.shape[1:]) for f in maps] == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]


@pytest.mark.slow
@pytest.mark.parametrize("size,spatial", [(32, 2), (48, 3), (40, 3), (64, 4)])
def test_any_input_size(size, spatial):
    for name in ("iresnet_tiny", "mbf_tiny", "iresnet_mini"):
        m = get_model(name, input_size=size, embedding_size=64).eval()
        emb, maps = m(torch.randn(2, 3, size, size), return_features=True)
        assert emb.shape == (2, 64), name
        assert len(maps) == 4 and maps[-1].shape[-2:] == (spatial, spatial), name
    r18 = get_model("r18", input_size=64)
    assert r18.fc.in_features == 512 * 4 * 4


def test_mbf_stage_features_at_112():
    m = get_model("mbf").eval()
    _, maps = m(torch.randn(1, 3, 112, 112), return_features=True)
    assert [tuple(f.shape[1:]) for f in maps] == [(128, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]


def test_demo_net_sizes_and_training_step():
    counts = {
        n: sum(p.numel() for p in get_model(n).parameters()) for n in ("iresnet_tiny", "mbf_tiny", "iresnet_mini")
    }
    assert 0.5e6 <= counts["iresnet_tiny"] <= 2e6
    assert 0.1e6 <= counts["mbf_tiny"] <= 0.3e6
    assert 0.1e6 <= counts["iresnet_mini"] <= 0.3e6
    m = get_model("mbf_tiny")
    x = torch.randn(8, 3, 32, 32)
    loss = m(x).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


def test_registry_errors_and_names():
    assert {
        "r18",
        "r34",
        "r50",
        "r100",
        "r200",
        "mbf",
        "iresnet_tiny",
        "mbf_tiny",
        "iresnet_mini",
        "resnet50_reid",
        "shufflenet_v2_x0_5",
    } <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'r51'"):
        get_model("r51")
    assert get_model("iresnet_mini").arch == "iresnet_mini"


@pytest.mark.slow
def test_resnet50_reid_torchvision_names():
    m = get_model("resnet50_reid").eval()
    sd = m.state_dict()
    assert tuple(sd["base.conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(sd["base.layer4.0.downsample.0.weight"].shape) == (2048, 1024, 1, 1)
    assert tuple(sd["base.layer3.5.conv3.weight"].shape) == (1024, 256, 1, 1)
    assert tuple(sd["bottleneck.running_mean"].shape) == (2048,)
    assert not m.bottleneck.bias.requires_grad
    # torchvision resnet50 has 25,557,032 parameters, 2,049,000 of them in fc; + BNNeck (2·2048)
    assert sum(p.numel() for p in m.parameters()) == 25_557_032 - 2_049_000 + 4096
    emb, maps = m(torch.randn(1, 3, 64, 32), return_features=True)
    assert emb.shape == (1, 2048) and maps[-1].shape[-2:] == (4, 2)  # last stride 1: /16
    assert get_model("resnet50_reid", last_stride=2).eval()(torch.randn(1, 3, 64, 32), return_features=True)[1][
        -1
    ].shape[-2:] == (2, 1)


def test_shufflenet_torchvision_names_and_reduction():
    m = get_model("shufflenet_v2_x0_5", embedding_size=256).eval()
    sd = m.state_dict()
    assert tuple(sd["base.conv1.0.weight"].shape) == (24, 3, 3, 3)
    assert tuple(sd["base.stage2.0.branch1.0.weight"].shape) == (24, 1, 3, 3)
    assert tuple(sd["base.stage3.1.branch2.3.weight"].shape) == (48, 1, 3, 3)
    assert tuple(sd["base.conv5.0.weight"].shape) == (1024, 192, 1, 1)
    # torchvision shufflenet_v2_x0_5: 1,366,792 parameters, fc 1,025,000
    assert sum(p.numel() for k, p in m.named_parameters() if k.startswith("base.")) == 1_366_792 - 1_025_000
    assert m(torch.randn(2, 3, 64, 32)).shape == (2, 256)
    before = get_model("shufflenet_v2_x0_5", neck_feat="before").eval()
    assert before(torch.randn(2, 3, 64, 32)).shape == (2, 1024)


# ------------------------------------------------------------------ every registered backbone
# over about a second each (ONNX export of a full-size network): part of the suite, outside the fast tier
HEAVY = {
    "r18",
    "r34",
    "r50",
    "r100",
    "r200",
    "resnet50_reid",
    "mbf_large",
    "sphere20",
    "sphere36",
    "shufflenet_v2_x0_5",
}


def _trained_like(model, x):
    """BN statistics measured on x (so even r200 gives finite outputs in eval mode) and non-trivial
    BN shifts, so that a round trip that lost either would show. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.bias.data.uniform_(-0.2, 0.2, generator=g)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batch
        model.train()(x)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def _small_input(name, batch=2):
    from facekd.models import model_spec
    from facekd.models._common import pair

    h, w = pair(model_spec(name).min_input_size)
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(batch)) * 2 - 1


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()])
def test_every_backbone_contract_round_trip_and_onnx(name, tmp_path):
    """For every registered name, at its smallest input: output shape and the stage-map contract,
    `embedding_size` honoured, a strict state_dict round trip through a file (load_backbone builds
    a fresh model, inferring its embedding size, and loads with strict=True), and an ONNX export
    that onnxruntime runs to the same embedding."""
    import numpy as np
    import onnxruntime as ort

    from facekd.models import embedding_dim, model_spec
    from facekd.models.checkpoint import load_backbone
    from facekd.onnx import export_onnx

    size = model_spec(name).min_input_size
    x = _small_input(name)
    torch.manual_seed(0)
    model = _trained_like(get_model(name, input_size=size), _small_input(name, batch=8))
    with torch.no_grad():
        emb, maps = model(x, return_features=True)
        assert torch.equal(model(x), emb)
    assert emb.shape == (2, model.embedding_size) == (2, embedding_dim(model, size))
    assert maps and all(m.dim() == 4 and m.shape[0] == 2 for m in maps)
    assert get_model(name, embedding_size=24, input_size=size).eval()(x).shape == (2, 24)

    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    loaded = load_backbone(tmp_path / "backbone.pth", name, input_size=size)  # a fresh model, strict=True
    assert loaded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(loaded(x), emb)

    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=size)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"data": x.numpy()})[0]
    ref = emb.numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_register_backbone_decorator_options_and_errors():
    from torch import nn

    from facekd.models import model_spec, register_backbone
    from facekd.models.registry import _REGISTRY

    @register_backbone("test_linear_net", embedding_size=8, input_size=4, min_input_size=2)
    class LinearNet(nn.Module):
        def __init__(self, embedding_size=8, input_size=4, bias=True):
            super().__init__()
            self.embedding_size = embedding_size
            self.fc = nn.Linear(3, embedding_size, bias=bias)

        def forward(self, x, return_features=False):
            emb = self.fc(x.mean(dim=(2, 3)))
            return (emb, [x]) if return_features else emb

    try:
        assert "test_linear_net" in list_models() and model_spec("test_linear_net").cls is LinearNet
        m = get_model("test_linear_net", embedding_size=5, bias=False)  # constructor options pass through
        assert m.fc.out_features == 5 and m.fc.bias is None and m.arch == "test_linear_net"
        with pytest.raises(ValueError, match="bad options"):
            get_model("test_linear_net", depth=3)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("test_linear_net", LinearNet)
        with pytest.raises(ValueError, match="cls="):
            register_backbone("test_factory", lambda **kw: LinearNet(**kw))
    finally:
        _REGISTRY.pop("test_linear_net", None)
