"""Checkpoint loading and class-centre merging on files written by the test."""

import pytest
import torch

from facekd.models import get_model
from facekd.models.checkpoint import load_backbone, merge_class_centres, partial_fc_partition

torch.set_num_threads(1)


def _randomise(model):
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t).abs() + 0.1)
    return model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_insightface_plain_and_module_prefix(tmp_path):
    src = _randomise(get_model("iresnet_mini", input_size=48, embedding_size=64))
    torch.save(src.state_dict(), tmp_path / "backbone.pth")
    m = load_backbone(tmp_path, "iresnet_mini")  # directory → backbone.pth; sizes inferred
    assert _same(m, src) and m.input_size == (48, 48) and m.embedding_size == 64 and not m.training
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "model.pt")
    assert _same(load_backbone(tmp_path / "model.pt", "iresnet_mini"), src)


def test_mbf_input_size_inferred(tmp_path):
    src = _randomise(get_model("mbf_tiny", input_size=48, embedding_size=32))
    torch.save(src.state_dict(), tmp_path / "m.pt")
    m = load_backbone(tmp_path / "m.pt", "mbf_tiny")
    assert m.input_size == (48, 48) and _same(m, src)


def test_wrapped_checkpoints(tmp_path):
    src = _randomise(get_model("iresnet_mini"))
    sd = src.state_dict()
    torch.save(
        {
            "epoch": 3,
            "global_step": 10,
            "state_dict_backbone": sd,
            "state_dict_softmax_fc": {"weight": torch.zeros(2, 2)},
        },
        tmp_path / "checkpoint_gpu_0.pt",
    )
    assert _same(load_backbone(tmp_path / "checkpoint_gpu_0.pt", "iresnet_mini"), src)
    task = {**{f"student.{k}": v for k, v in sd.items()}, "head.weight": torch.zeros(3, 512)}
    torch.save({"task": task, "step": 5, "optimizer": {}}, tmp_path / "last.pt")
    assert _same(load_backbone(tmp_path / "last.pt", "iresnet_mini"), src)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 1}, tmp_path / "fxz.pt")
    assert _same(load_backbone(tmp_path / "fxz.pt", "iresnet_mini"), src)


@pytest.mark.slow
def test_clear_errors(tmp_path):
    sd = get_model("iresnet_mini").state_dict()
    bad = dict(sd)
    bad.pop("layer2.0.bn1.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(
        ValueError, match=r"bad\.pt.*1 missing \(layer2\.0\.bn1\.weight\).*1 unexpected \(extra\.weight\)"
    ):
        load_backbone(tmp_path / "bad.pt", "iresnet_mini")
    with pytest.warns(UserWarning, match="non-strictly"):
        load_backbone(tmp_path / "bad.pt", "iresnet_mini", strict=False)
    shaped = dict(sd)
    shaped["layer1.0.conv1.weight"] = torch.zeros(8, 8, 5, 5)
    torch.save(shaped, tmp_path / "shape.pt")
    with pytest.raises(
        ValueError, match=r"1 shape mismatches, e\.g\. layer1\.0\.conv1\.weight: checkpoint \(8, 8, 5, 5\)"
    ):
        load_backbone(tmp_path / "shape.pt", "iresnet_mini", strict=False)
    torch.save(get_model("mbf_tiny").state_dict(), tmp_path / "mbf.pt")
    with pytest.raises(ValueError, match="no key matches"):
        load_backbone(tmp_path / "mbf.pt", "iresnet_mini")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, refused
    with pytest.raises(ValueError, match="refused to load .*GLOBAL torch.nn.modules.linear.Linear"):
        load_backbone(tmp_path / "module.pt", "iresnet_mini")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="backbone.pth"):
        load_backbone(tmp_path / "empty", "iresnet_mini")


@pytest.mark.slow
def test_reid_torchvision_and_rsb_layouts(tmp_path):
    src = _randomise(get_model("shufflenet_v2_x0_5"))
    base = {k[len("base.") :]: v for k, v in src.state_dict().items() if k.startswith("base.")}
    tv = {**base, "fc.weight": torch.zeros(1000, 1024), "fc.bias": torch.zeros(1000)}  # torchvision ImageNet layout
    torch.save(tv, tmp_path / "imagenet.pth")
    with pytest.raises(ValueError, match="missing.*bottleneck"):
        load_backbone(tmp_path / "imagenet.pth", "shufflenet_v2_x0_5")
    with pytest.warns(UserWarning):
        m = load_backbone(tmp_path / "imagenet.pth", "shufflenet_v2_x0_5", strict=False)
    assert all(torch.equal(m.state_dict()[f"base.{k}"], v) for k, v in base.items())
    rsb = {**src.state_dict(), "classifier.weight": torch.zeros(751, 1024)}  # reid-strong-baseline layout
    torch.save(rsb, tmp_path / "rsb.pth")
    assert _same(load_backbone(tmp_path / "rsb.pth", "shufflenet_v2_x0_5"), src)


@pytest.mark.parametrize("C,W", [(10, 3), (7, 4), (5, 1)])
def test_merge_rank_softmax_weights(tmp_path, C, W):
    full = torch.randn(C, 6)
    for r in range(W):
        start, n = partial_fc_partition(C, W, r)
        assert n == C // W + (r < C % W) and start == C // W * r + min(r, C % W)
        torch.save(full[start : start + n].clone(), tmp_path / f"rank_{r}_softmax_weight.pt")
        torch.save(torch.zeros(n, 6), tmp_path / f"rank_{r}_softmax_weight_mom.pt")  # ignored
    assert torch.equal(merge_class_centres(tmp_path, C), full)


def test_merge_checkpoint_gpu_and_errors(tmp_path):
    C, W = 11, 3
    full = torch.randn(C, 4)
    paths = []
    for r in reversed(range(W)):  # given out of order: rank comes from the name
        start, n = partial_fc_partition(C, W, r)
        p = tmp_path / f"checkpoint_gpu_{r}.pt"
        torch.save({"epoch": 0, "state_dict_softmax_fc": {"weight": full[start : start + n].clone()}}, p)
        paths.append(p)
    assert torch.equal(merge_class_centres(paths, C), full)
    assert torch.equal(merge_class_centres(tmp_path, C), full)
    with pytest.raises(
        ValueError, match=r"checkpoint_gpu_2\.pt: rank 2 of 3 with 12 classes should hold \(4, d\).*got \(3, 4\)"
    ):
        merge_class_centres(tmp_path, 12)
    with pytest.raises(ValueError, match="ranks must be 0..1"):
        merge_class_centres(paths[:2], C)
    (tmp_path / "sub").mkdir()
    with pytest.raises(FileNotFoundError, match="no rank_"):
        merge_class_centres(tmp_path / "sub", C)
