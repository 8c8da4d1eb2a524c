"""Margin heads against direct float64 loops (arccos, then cos(θ + m)), incl. angles near π."""

import math

import pytest
import torch

from facekd.models.heads import ArcFaceHead, get_head, register_head

torch.set_num_threads(1)


def slow_logits(x, w, labels, s, m, kind, overflow="cosface"):
    """Loop reference in float64: cos θ = x̂·ŵ, θ = arccos, target by the paper's formula."""
    x, w = x.double(), w.double()
    out = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)
    for i in range(x.shape[0]):
        for j in range(w.shape[0]):
            c = float(x[i] @ w[j] / (x[i].norm() * w[j].norm()))
            c = min(1.0, max(-1.0, c))
            if j == int(labels[i]):
                theta = math.acos(c)
                if kind == "cosface":
                    c = c - m
                elif overflow == "cosface" and theta + m > math.pi:
                    c = c - m * math.sin(m)
                elif overflow == "easy" and c <= 0:
                    pass
                else:
                    c = math.cos(theta + m)
            out[i, j] = s * c
    return out


def _setup(num=6, d=5, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num, d, generator=g), torch.randint(0, classes, (num,), generator=g)


@pytest.mark.parametrize("overflow", ["cosface", "easy", "none"])
def test_arcface_matches_loop(overflow):
    x, _ = _setup()
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    head = get_head("arcface", 5, 4, overflow=overflow)
    assert head.m == 0.5 and head.s == 64.0
    # make some targets nearly opposite (θ near π, beyond π − m) and one exactly aligned
    with torch.no_grad():
        head.weight[y[0]] = -x[0] + 1e-3
        head.weight[y[1]] = -x[1] * 3 + 0.2 * torch.randn(5)
        head.weight[y[2]] = x[2]
    ref = slow_logits(x, head.weight.detach(), y, 64.0, 0.5, "arcface", overflow)
    # float32 vs float64 (×64): 1e-3; the aligned row (θ = 0) also carries the sin θ floor
    # sqrt(eps) = 3.2e-4 of the differentiable form, i.e. ≤ s·sin(m)·3.2e-4 ≈ 0.0098
    err = (head(x, y).double() - ref).abs().max(1).values
    assert (err[[0, 1, 3, 4, 5]] < 1e-3).all() and err[2] < 64 * math.sin(0.5) * 1e-7**0.5 + 1e-3
    c0 = torch.nn.functional.cosine_similarity(x[0:1], head.weight[y[0]].detach()[None]).item()
    assert math.acos(max(-1, c0)) + 0.5 > math.pi  # the overflow branch was exercised


def test_cosface_and_softmax_match():
    x, y = _setup(seed=1)
    head = get_head("cosface", 5, 4)
    assert head.m == 0.4
    assert torch.allclose(head(x, y).double(), slow_logits(x, head.weight.detach(), y, 64.0, 0.4, "cosface"), atol=1e-3)
    sm = get_head("softmax", 5, 4)
    with torch.no_grad():
        sm.bias.normal_()
    ref = torch.stack(
        [torch.stack([x[i].double() @ sm.weight[j].double() + sm.bias[j].double() for j in range(4)]) for i in range(6)]
    )
    assert torch.allclose(sm(x, y).double(), ref.detach(), atol=1e-5)


def test_margin_only_on_target_and_minus_one_label():
    x, y = _setup(seed=2)
    head = get_head("arcface", 5, 4, s=30.0, m=0.3)
    cos = head.cosine(x)
    logits = head(x, torch.full_like(y, -1))
    assert torch.allclose(logits, 30.0 * cos)
    changed = head(x, y) != 30.0 * cos
    assert (
        changed.sum() <= x.shape[0]
        and not changed[torch.arange(6), :].logical_and(torch.nn.functional.one_hot(y, 4) == 0).any()
    )


def test_gradients_finite_at_cos_plus_minus_one():
    for sign in (1.0, -1.0):
        head = get_head("arcface", 3, 2)
        x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
        with torch.no_grad():
            head.weight.copy_(torch.tensor([[sign, 0.0, 0.0], [0.0, sign * 5.0, 0.0]]))
        logits = head(x, torch.tensor([0, 1]))
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
        assert torch.isfinite(logits).all()
        assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_weight_init_and_errors():
    torch.manual_seed(0)
    head = get_head("arcface", 64, 500)
    assert head.weight.shape == (500, 64)
    assert abs(head.weight.std().item() - 0.01) < 1e-3 and abs(head.weight.mean().item()) < 1e-3
    with pytest.raises(ValueError, match="unknown head"):
        get_head("sphereface", 4, 2)
    with pytest.raises(ValueError, match="expected embeddings"):
        head(torch.randn(2, 63), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="overflow"):
        ArcFaceHead(4, 2, overflow="clip")
    with pytest.raises(ValueError, match="already registered"):
        register_head("arcface", ArcFaceHead)


def test_fp16_embeddings_give_fp32_logits():
    x, y = _setup()
    head = get_head("cosface", 5, 4, m=0.0)
    assert head(x.half(), y).dtype == torch.float32


@pytest.mark.parametrize("name", ["arcface", "cosface", "softmax"])
def test_logits_under_cpu_bf16_autocast_equal_float32(name):
    """The margin and the logits ignore autocast: bf16 matmuls moved ArcFace target logits by up to 0.7."""
    torch.manual_seed(3)
    head = get_head(name, 64, 1000)
    x, y = torch.randn(32, 64), torch.randint(0, 1000, (32,))
    exact = head(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(x, y)
        assert torch.nn.functional.linear(x, head.weight).dtype == torch.bfloat16  # autocast is on
    assert mixed.dtype == torch.float32
    assert (mixed - exact).abs().max() <= 1e-6
