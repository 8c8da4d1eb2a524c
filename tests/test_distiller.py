"""Distiller: config → loss + weighting + λ, projections, feature maps, masks, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facekd.losses.distiller import LOSSES, Distiller, Features, probe_feature_shapes

torch.set_num_threads(1)

S_SHAPES = [(4, 8, 8), (6, 4, 4)]
T_SHAPES = [(5, 8, 8), (7, 2, 2)]


def _maps(shapes, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, *s, generator=g) for s in shapes]


def test_l2_uniform_with_projection_matches_loop():
    torch.manual_seed(0)
    d = Distiller("l2", "uniform", lam=0.5, student_dim=3, teacher_dim=4)
    assert isinstance(d.projection, nn.Linear)
    s, t = torch.randn(5, 3), torch.randn(5, 4)
    loss, logs = d(Features(s), Features(t), step=0)
    P = d.projection
    ref = 0.0
    for i in range(5):
        p = [sum(P.weight[o, c].item() * s[i, c].item() for c in range(3)) + P.bias[o].item() for o in range(4)]
        np_ = math.sqrt(sum(v * v for v in p))
        nt = math.sqrt(sum(v * v for v in t[i].tolist()))
        ref += sum((a / np_ - b / nt) ** 2 for a, b in zip(p, t[i].tolist()))
    assert loss.item() == pytest.approx(0.5 * ref / 5, rel=1e-5)
    assert logs["distill/loss"] == pytest.approx(ref / 5, rel=1e-5)
    assert logs["distill/lambda"] == 0.5
    # same dims: no projection; normalize=False compares raw embeddings
    d = Distiller("l2", student_dim=4, teacher_dim=4, normalize=False, dim_reduce="mean")
    assert d.projection is None
    assert d(Features(t + 1), Features(t))[0].item() == pytest.approx(1.0)


def test_from_config_matches_constructor_and_validates():
    cfg = {"loss": "l2", "weighting": "soft_exp", "lambda": 2.0, "options": {"T": 0.5, "warmup_steps": 4}}
    d = Distiller.from_config(cfg, 8, 8)
    assert d.lam == 2.0 and d.weighting.T == 0.5 and d.warmup_steps == 4
    s, t = torch.randn(6, 8), torch.randn(6, 8)
    loss2, logs = d(Features(s), Features(t), step=2)
    loss4, _ = d(Features(s), Features(t), step=4)
    assert loss2.item() == pytest.approx(loss4.item() / 2)
    assert logs["distill/lambda"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown keys"):
        Distiller.from_config({"loss": "l2", "weight": 1}, 8, 8)
    with pytest.raises(ValueError, match="unknown options"):
        Distiller.from_config({"loss": "l2", "options": {"temprature": 3}}, 8, 8)
    with pytest.raises(ValueError, match="unknown distillation loss"):
        Distiller("l3", student_dim=8, teacher_dim=8)
    with pytest.raises(ValueError, match="warmup_steps"):
        Distiller("l2", "warmup", student_dim=8, teacher_dim=8)
    with pytest.raises(ValueError, match="needs student_dim"):
        Distiller("l2")


@pytest.mark.parametrize(
    "loss",
    ["cosine", "hkd", "rkd", "cc", "sp", "pkt", "darkrank", "vid", "ekd", "gkd", "adadistill", "margin_distillation"],
)
def test_pad_refused_for_non_gaussian_losses(loss):
    with pytest.raises(ValueError, match="pad"):
        Distiller(loss, "pad", student_dim=4, teacher_dim=4)


def test_pad_options_only_with_pad():
    with pytest.raises(ValueError, match="only to weighting 'pad'"):
        Distiller("l2", "uniform", student_dim=4, teacher_dim=4, sigma="per_sample")
    with pytest.raises(ValueError, match="sigma"):
        Distiller("l2", "pad", student_dim=4, teacher_dim=4, sigma="per_channel")


def test_every_loss_with_every_compatible_weighting_runs_and_trains():
    weightings = ["uniform", "soft_exp", "soft_poly", "hard_mining", "hard_discarding", "pad"]
    B = 6
    for loss, spec in LOSSES.items():
        source, pad_ok = spec.reads, spec.pad_compatible
        for w in weightings:
            if w == "pad" and not pad_ok:
                continue
            context = {"num_classes": 7, "class_centres": torch.randn(7, 5)}  # for the margin-head losses
            shapes = {"student_shapes": S_SHAPES, "teacher_shapes": T_SHAPES}
            d = Distiller(loss, w, student_dim=4, teacher_dim=5, backbone_dim=6, **shapes, **context)
            s_emb = torch.randn(B, 4, requires_grad=True)
            s_maps = [m.requires_grad_(True) for m in _maps(S_SHAPES, B, 1)]
            labels = torch.arange(B) % 3
            backbone = torch.randn(B, 6, requires_grad=True)
            student = Features(s_emb, s_maps, torch.randn(B, 7, requires_grad=True), labels, backbone)
            teacher = Features(torch.randn(B, 5), _maps(T_SHAPES, B, 2), torch.randn(B, 7))
            out, logs = d(student, teacher, step=1)
            assert out.dim() == 0 and torch.isfinite(out), (loss, w)
            out.backward()
            for name, p in d.named_parameters():
                assert p.grad is not None, (loss, w, name)  # DDP: every parameter is used
            stats = d.per_sample_stats
            assert stats["gap"].shape == (B,) and stats["weight"].shape == (B,)
            assert (stats["variance"] is not None) == (w == "pad")
            assert set(logs) >= {"distill/loss", "distill/gap", "distill/lambda"}
            assert d.needs_maps == (source == "maps")


def test_map_losses_need_maps_and_hkd_needs_logits():
    d = Distiller("at")
    with pytest.raises(ValueError, match="stage feature maps"):
        d(Features(torch.randn(2, 4)), Features(torch.randn(2, 4)))
    with pytest.raises(ValueError, match="student_shapes"):
        Distiller("fitnet")
    with pytest.raises(ValueError, match="logits"):
        Distiller("hkd")(Features(torch.randn(2, 4)), Features(torch.randn(2, 4)))
    with pytest.raises(ValueError, match="spatial mask"):
        Distiller("l2", student_dim=4, teacher_dim=4)(
            Features(torch.randn(2, 4)), Features(torch.randn(2, 4)), mask=torch.ones(2, 3, 3)
        )


@pytest.mark.parametrize("weighting", ["uniform", "pad"])
def test_fitnet_mask_blocks_gradient_outside_mask(weighting):
    torch.manual_seed(0)
    d = Distiller("fitnet", weighting, student_shapes=S_SHAPES, teacher_shapes=T_SHAPES, layers=[0])
    d.eval()  # BN in training mode couples positions through batch statistics; eval isolates them
    fs = _maps(S_SHAPES, 2, 3)
    fs[0].requires_grad_(True)
    mask = torch.zeros(2, 8, 8)
    mask[:, :4, :4] = 1.0
    loss, _ = d(Features(torch.randn(2, 4), fs), Features(torch.randn(2, 4), _maps(T_SHAPES, 2, 4)), mask=mask)
    loss.backward()
    g = fs[0].grad
    assert g[:, :, 4:, :].abs().sum() == 0 and g[:, :, :, 4:].abs().sum() == 0
    assert g[:, :, :4, :4].abs().sum() > 0


def test_at_uses_all_layers_by_default_and_matches_direct_sum():
    from facekd.losses.distill import at_elements

    d = Distiller("at", dim_reduce="mean")
    fs, ft = _maps(S_SHAPES, 3, 5), _maps(T_SHAPES, 3, 6)
    loss, _ = d(Features(torch.randn(3, 2), fs), Features(torch.randn(3, 2), ft))
    ref = sum(at_elements(a, b).mean() for a, b in zip(fs, ft))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


class _TinyNet(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.a = nn.Conv2d(3, c1, 3, stride=2, padding=1)
        self.b = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, 4)

    def forward(self, x, return_features=False):
        f1 = self.a(x)
        f2 = self.bn(self.b(f1))
        emb = self.fc(f2.mean(dim=(2, 3)))
        return (emb, [f1, f2]) if return_features else emb


def test_from_config_probes_feature_shapes_without_touching_bn_stats():
    student, teacher = _TinyNet(2, 3), _TinyNet(4, 5)
    before = teacher.bn.running_mean.clone()
    assert probe_feature_shapes(student, 16) == [(2, 8, 8), (3, 4, 4)]
    d = Distiller.from_config(
        {"loss": "fitnet", "weighting": "pad"}, 4, 4, student=student, teacher=teacher, input_size=16
    )
    assert torch.equal(teacher.bn.running_mean, before) and teacher.training
    x = torch.randn(3, 3, 16, 16)
    se, sm = student(x, return_features=True)
    te, tm = teacher(x, return_features=True)
    loss, logs = d(Features(se, sm), Features(te.detach(), [m.detach() for m in tm]))
    assert torch.isfinite(loss) and "distill/logvar" in logs
    with pytest.raises(ValueError, match="probe"):
        Distiller.from_config({"loss": "fitnet"}, 4, 4)


@pytest.mark.parametrize("loss", ["fitnet", "at"])
def test_from_config_probes_non_square_inputs(loss):  # re-ID crops are (256, 128)
    student, teacher = _TinyNet(2, 3), _TinyNet(4, 5)
    assert probe_feature_shapes(teacher, (16, 8)) == [(4, 8, 4), (5, 4, 2)]
    d = Distiller.from_config(
        {"loss": loss, "weighting": "pad"}, 4, 4, student=student, teacher=teacher, input_size=(16, 8)
    )
    x = torch.randn(3, 3, 16, 8)
    se, sm = student(x, return_features=True)
    te, tm = teacher(x, return_features=True)
    loss_value, _ = d(Features(se, sm), Features(te.detach(), [m.detach() for m in tm]))
    assert torch.isfinite(loss_value)


@pytest.mark.parametrize(
    "cfg",
    [
        {"loss": "hkd", "lambda": 1.0},
        {"loss": "fitnet", "weighting": "pad", "options": {"layers": [-1]}},
        {"loss": "l2", "weighting": "pad", "options": {"sigma": "per_sample", "l2_stage_steps": 2}},
    ],
)
@pytest.mark.slow
def test_classification_task_trains_through_the_spine(tmp_path, cfg):
    import numpy as np

    from facekd.data.arrays import ArrayDataset
    from facekd.models import SmallCNN
    from facekd.tasks import ClassificationTask, ClassifierTeacher
    from facekd.train import TrainConfig, train

    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (24, 8, 8), dtype=np.uint8), np.arange(24) % 3)
    torch.manual_seed(0)
    teacher = ClassifierTeacher(SmallCNN(16, width=8), nn.Linear(16, 3))
    student = SmallCNN(8, width=4)
    d = Distiller.from_config(cfg, 8, 16, student=student, teacher=teacher.model, input_size=8)
    task = ClassificationTask(student, nn.Linear(8, 3), d, teacher)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    train(task, ds, TrainConfig(epochs=2, batch_size=8, lr=0.05, log_every=1), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "backbone.pth").exists()
    saved = torch.load(tmp_path / "run" / "backbone.pth", weights_only=True)
    assert not any(k.startswith(("var_branches", "hints")) for k in saved)  # never exported
    changed = [k for k, v in d.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed or not before  # the distiller's own parameters (projection, branch) were trained
    assert all(p.requires_grad is False for p in teacher.parameters())


def test_pad_branch_gradients_are_clipped_per_parameter():
    s, t, x = 30 * torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 3)  # errors far above σ²

    def branch_grads(clip):
        torch.manual_seed(0)
        d = Distiller("l2", "pad", 1.0, 4, 4, backbone_dim=3, branch_clip=clip)
        loss, _ = d(Features(s, backbone=x), Features(t))
        loss.backward()
        return [p.grad.clone() for p in d.var_branches.parameters()]

    free, clipped = branch_grads(None), branch_grads(0.5)
    assert max(float(g.norm()) for g in free) > 0.5  # the case clipping is for
    for g, c in zip(free, clipped, strict=True):
        expected = g * min(1.0, 0.5 / (float(g.norm()) + 1e-12))
        torch.testing.assert_close(c, expected)


@pytest.mark.parametrize("branch_grad", ["as_loss", "lambda_free"])
def test_pad_branch_gradient_scaling_option(branch_grad):
    s, t, x = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 3)
    grads = {}
    for lam in (1.0, 10.0):
        torch.manual_seed(0)
        d = Distiller("l2", "pad", lam, 4, 4, backbone_dim=3, branch_grad=branch_grad, branch_clip=None)
        emb, feat = s.clone().requires_grad_(True), x.clone().requires_grad_(True)
        loss, _ = d(Features(emb, backbone=feat), Features(t))
        loss.backward()
        grads[lam] = (emb.grad.clone(), feat.grad.clone(), d.var_branches[0].fc.weight.grad.clone())
    # the weighted error's gradient on the embedding always scales with λ
    torch.testing.assert_close(grads[10.0][0], 10 * grads[1.0][0])
    # the gradient through the log-variance (branch and backbone path): λ-free only when asked
    scale = 1.0 if branch_grad == "lambda_free" else 10.0
    torch.testing.assert_close(grads[10.0][1], scale * grads[1.0][1])
    torch.testing.assert_close(grads[10.0][2], scale * grads[1.0][2])
