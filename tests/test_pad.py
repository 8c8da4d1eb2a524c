"""PAD's learning behaviour on a toy regression: noisy samples must end with larger learned σ²,
and the student they train must be pulled less by the noisy targets than with plain L2."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facekd.losses.distiller import Distiller, Features
from facekd.losses.variance import ConvVarianceBranch, VarianceBranch

torch.set_num_threads(1)


def _toy(n=256, dim=4, seed=0):
    """Teacher targets y = A x + exp(x_0)·ε: heteroscedastic noise, large on the x_0 > 0 ('hard')
    half. log σ² = 2 x_0 is linear in the student's output A x, so the FC+BN branch can learn it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    A = torch.randn(dim, dim, generator=g)
    clean = x @ A.t()
    noisy = x[:, 0] > 0
    y = clean + torch.exp(x[:, :1]) * torch.randn(n, dim, generator=g)
    return x, y, clean, noisy


def _fit(weighting: str, steps: int = 1000, **opts):
    """Train a linear student on the toy; PAD's branch reads the student's input x, the feature its
    "embedding layer" (the Linear) reads, as the paper's branch parallel with f_s."""
    torch.manual_seed(0)
    x, y, clean, noisy = _toy()
    student = nn.Linear(4, 4)
    extra = {"backbone_dim": 4, **opts} if weighting == "pad" else {}
    d = Distiller("l2", weighting, 1.0, 4, 4, normalize=False, **extra)
    opt = torch.optim.Adam(list(student.parameters()) + list(d.parameters()), lr=0.05)
    for step in range(steps):
        opt.zero_grad()
        loss, _ = d(Features(student(x), backbone=x), Features(y), step)
        loss.backward()
        opt.step()
    d.eval()
    with torch.no_grad():
        d(Features(student(x), backbone=x), Features(y))
        clean_err = (student(x) - clean).pow(2).mean().item()
    return d.per_sample_stats, noisy, clean_err


@pytest.mark.slow
@pytest.mark.parametrize("sigma", ["per_dim", "per_sample"])
def test_noisy_samples_learn_larger_variance(sigma):
    stats, noisy, _ = _fit("pad", sigma=sigma)
    var = stats["variance"]
    assert var[noisy].mean() > 3 * var[~noisy].mean()
    # the learned weight 1/σ² is larger on the clean samples
    assert stats["weight"][~noisy].mean() > stats["weight"][noisy].mean()
    # learned variance grows with the gap (Fig. 2's positive correlation)
    gap, v = stats["gap"], var
    rank = lambda a: a.argsort().argsort().float()  # noqa: E731
    corr = torch.corrcoef(torch.stack([rank(gap), rank(v)]))[0, 1]
    assert corr > 0.3


@pytest.mark.slow
def test_pad_student_recovers_the_clean_function_better_than_plain_l2():
    """Down-weighting the noisy targets (1/σ²) is weighted least squares: the student ends closer to
    the noise-free teacher function A x than with plain L2. Reading the branch's own input (the
    regressed output) instead of the feature beside it, the branch can only use what the student
    already outputs."""
    _, _, err_l2 = _fit("uniform")
    _, _, err_pad = _fit("pad")
    _, _, err_regressed = _fit("pad", branch_input="regressed", detach=True)
    assert err_pad < 0.5 * err_l2
    assert err_regressed < err_l2


def test_variance_branches_shapes_and_init():
    b = VarianceBranch(6, 6, init_logvar=-2.0)
    assert b(torch.randn(5, 6)).shape == (5, 6)
    assert b.bn.bias.detach().eq(-2.0).all()
    assert VarianceBranch(6, 1)(torch.randn(5, 6)).shape == (5, 1)
    c = ConvVarianceBranch(3, 4)
    assert c(torch.randn(2, 3, 5, 5)).shape == (2, 4, 5, 5)
    with pytest.raises(ValueError, match="expects"):
        b(torch.randn(5, 6, 1))
    with pytest.raises(ValueError, match="expects"):
        c(torch.randn(2, 3, 5))


def test_variance_branch_lives_in_the_distiller_not_the_student():
    student = nn.Linear(4, 4)
    d = Distiller("l2", "pad", 1.0, 4, 4, backbone_dim=6)
    names = [n for n, _ in d.named_parameters()]
    assert any(n.startswith("var_branches.") for n in names)
    assert not any("var" in n for n in student.state_dict())


def test_detach_option_stops_branch_gradient_reaching_student():
    x = torch.randn(8, 4)
    for detach, expect_same in ((True, True), (False, False)):
        torch.manual_seed(0)
        student = nn.Linear(4, 4)
        d = Distiller(
            "l2", "pad", 1.0, 4, 4, normalize=False, detach=detach, branch_input="regressed", dim_reduce="sum"
        )
        y = torch.randn(8, 4)
        emb = student(x)
        loss, _ = d(Features(emb), Features(y))
        g_full = torch.autograd.grad(loss, emb)[0]
        # gradient through the squared-error path only: err² · exp(−s) with s held fixed
        s = d.var_branches[0](emb).detach()
        g_err = 2 * (emb - y) * torch.exp(-s) / 8
        assert torch.allclose(g_full, g_err, atol=1e-6) == expect_same


def test_demo_fig2_binning(tmp_path):
    import numpy as np

    from facekd.demo import pad as demo

    class Ctx:
        def path(self, name):
            return tmp_path / name

    rng = np.random.default_rng(0)
    v = rng.uniform(0.1, 1.0, 200)
    pad = {"sigma2": v, "gap": 2 * v, "effective_weight": 1 / v}
    out = demo._fig2(Ctx(), pad, np.full(200, 3.0), np.full(200, 2.0), bins=4)
    assert (tmp_path / "pad_fig2.png").stat().st_size > 0
    assert sum(b["proportion"] for b in out["bins"]) == pytest.approx(1.0)
    gaps = [b["gap_pad"] for b in out["bins"]]
    assert gaps == sorted(gaps)
    assert all(b["gap_uniform"] == pytest.approx(3.0) and b["gap_uniform_effective"] == 2.0 for b in out["bins"])
    # weight × gap = 2·mean(1/v)^-1 is flat across bins when gap ∝ variance
    effects = [b["effect_pad"] for b in out["bins"]]
    assert max(effects) == pytest.approx(min(effects))


@pytest.mark.parametrize(
    "arch, size, expected",
    [
        ("iresnet_tiny", 32, lambda m: m.fc.in_features),  # flattened last stage map
        ("mbf_tiny", 32, lambda m: m.conv_sep.layers[0].out_channels * 2 * 2),  # the GDC's input map
        ("sphere20", 32, lambda m: m.fc.in_features),
        ("small_cnn", 28, lambda m: m.fc.in_features),  # pooled last stage map
        ("shufflenet_v2_x0_5", (64, 32), lambda m: m.base.out_channels),  # pooled feature before the BNNeck
    ],
)
@pytest.mark.slow
def test_branch_reads_the_input_of_the_embedding_layer(arch, size, expected):
    """The branch is parallel with f_s: it reads what the student's embedding layer reads, captured
    without changing the student's forward (same output with and without the Distiller attached)."""
    from facekd.losses.variance import embedding_layer
    from facekd.models import embedding_dim, get_model

    torch.manual_seed(0)
    model = get_model(arch, input_size=size).eval()
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(3, 3, h, w)
    seen: dict = {}
    hook = embedding_layer(model).register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0]))
    with torch.no_grad():
        plain = model(x)
    hook.remove()
    dim = embedding_dim(model, size)
    d = Distiller.from_config({"loss": "l2", "weighting": "pad"}, dim, dim, student=model, input_size=size)
    assert d.var_branches[0].fc.in_features == expected(model) == seen["x"][0].numel()
    with torch.no_grad():
        tapped = model(x)
    assert torch.equal(plain, tapped)
    loss, logs = d(Features(tapped), Features(torch.randn(3, dim)))
    assert torch.isfinite(loss) and logs["distill/pad_weight"] > 0
    with pytest.raises(ValueError, match="did not run"):  # the feature is used once, never stale
        d(Features(tapped), Features(torch.randn(3, dim)))


def test_backbone_path_trains_the_student_unless_detached():
    torch.manual_seed(0)
    feat, t = torch.randn(6, 5), torch.randn(6, 4)
    for detach in (False, True):
        x = feat.clone().requires_grad_(True)
        d = Distiller("l2", "pad", 1.0, 4, 4, backbone_dim=5, detach=detach)
        emb = torch.randn(6, 4)  # the embedding does not depend on x here: only the branch reads it
        loss, _ = d(Features(emb, backbone=x), Features(t))
        loss.backward()
        assert (x.grad is None) == detach


def test_logged_loss_splits_into_weighted_gap_and_log_variance():
    """distill/loss = weighted gap + ln σ² term; with one σ per sample under the mean over D the
    effective weight of sample i is 1/(D σ_i²), and `init_logvar: auto` puts BN's bias at −ln D."""
    torch.manual_seed(0)
    D = 8
    d = Distiller("l2", "pad", 3.0, D, D, normalize=False, backbone_dim=5)
    assert d.var_branches[0].bn.bias.item() == pytest.approx(-math.log(D))
    assert Distiller("l2", "pad", 1.0, D, D, backbone_dim=5, dim_reduce="sum").var_branches[0].bn.bias.item() == 0
    s, t, x = torch.randn(6, D), torch.randn(6, D), torch.randn(6, 5)
    out, logged = d(Features(s, backbone=x), Features(t))
    logs = {k: float(v) for k, v in logged.items()}  # 0-d tensors, read back as the trainer does
    assert out.item() == pytest.approx(3.0 * logs["distill/loss"], rel=1e-5)
    assert logs["distill/loss"] == pytest.approx(logs["distill/pad_weighted_gap"] + logs["distill/pad_log_sigma2"])
    stats = d.per_sample_stats
    var = stats["variance"]
    gap = (s - t).pow(2).sum(dim=1)
    torch.testing.assert_close(stats["effective_weight"], 1 / (D * var), rtol=1e-5, atol=0)
    assert logs["distill/pad_weighted_gap"] == pytest.approx((gap / (D * var)).mean().item(), rel=1e-5)
    torch.testing.assert_close(stats["log_variance"], var.log(), rtol=1e-5, atol=1e-6)


def test_a_model_without_embedding_layer_gets_one_clear_line():
    with pytest.raises(ValueError, match="embedding_layer"):
        Distiller.from_config({"loss": "l2", "weighting": "pad"}, 4, 4, student=nn.Linear(4, 4), input_size=4)
    with pytest.raises(ValueError, match="backbone_dim"):
        Distiller("l2", "pad", 1.0, 4, 4)
    d = Distiller.from_config(
        {"loss": "l2", "weighting": "pad", "options": {"branch_input": "regressed"}}, 4, 4, student=nn.Linear(4, 4)
    )
    assert d.var_branches[0].fc.in_features == 4 and not d.needs_backbone
