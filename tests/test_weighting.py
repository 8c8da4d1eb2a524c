"""Weighting schemes against direct formulas (PAD paper Eq. 1, 3, 4, 7, Table 1, warm-up)."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.losses.weighting import (
    Term,
    get_weighting,
    pad_nll,
    reduce_dims,
    warmup_factor,
)

torch.set_num_threads(1)


def _gaps():
    return torch.tensor([0.1, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)


def _direct(d, w):
    return sum(a * b for a, b in zip(w, d)) / sum(w)


@pytest.mark.parametrize(
    "name,opts,raw_weight",
    [
        ("uniform", {}, lambda d: 1.0),
        ("soft_exp", {"T": 0.7}, lambda d: math.exp(-d / 0.7)),
        ("soft_poly", {"alpha": 2.0}, lambda d: (1 + d) ** -2.0),
        ("hard_mining", {"T": 1.5}, lambda d: math.exp(d / 1.5)),
    ],
)
def test_soft_weightings_match_formula(name, opts, raw_weight):
    d = _gaps()
    loss, w, gap = get_weighting(name, **opts)([Term(d)])
    raw = [raw_weight(v) for v in d.tolist()]
    assert loss.item() == pytest.approx(_direct(d.tolist(), raw))
    assert w.sum().item() == pytest.approx(1.0)
    for a, b in zip(w.tolist(), raw):
        assert a == pytest.approx(b / sum(raw))
    assert torch.equal(gap, d)


def test_soft_exp_down_weights_large_gaps_hard_mining_up_weights_them():
    d = _gaps()
    _, w_exp, _ = get_weighting("soft_exp", T=1.0)([Term(d)])
    _, w_hm, _ = get_weighting("hard_mining", T=1.0)([Term(d)])
    order = d.argsort()
    assert (w_exp[order].diff() < 0).all() and (w_hm[order].diff() > 0).all()


def test_hard_discarding_drops_largest_fraction():
    d = torch.arange(10, dtype=torch.float64)  # gaps 0..9
    loss, w, _ = get_weighting("hard_discarding", fraction=0.2)([Term(d)])
    assert loss.item() == pytest.approx(sum(range(8)) / 8)  # 8 and 9 dropped
    assert (w[8:] == 0).all() and w[:8].sum().item() == pytest.approx(1.0)
    # fraction 0 is the mean, and at least one sample is always kept
    assert get_weighting("hard_discarding", fraction=0.0)([Term(d)])[0].item() == pytest.approx(4.5)
    assert get_weighting("hard_discarding", fraction=0.99)([Term(d[:2])])[0].item() == pytest.approx(0.0)


def test_weights_are_detached_by_default():
    d = _gaps().requires_grad_(True)
    get_weighting("soft_exp", T=1.0)([Term(d)])[0].backward()
    w = torch.softmax(-d.detach(), 0)
    torch.testing.assert_close(d.grad, w)  # ∂(Σ w_i d_i)/∂d_i = w_i with w constant
    d.grad = None
    get_weighting("soft_exp", T=1.0, detach_weights=False)([Term(d)])[0].backward()
    assert not torch.allclose(d.grad, w)


def test_reduce_dims_sum_mean_mask():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    m = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert reduce_dims(v, how="sum").tolist() == [6.0, 15.0]
    assert reduce_dims(v, how="mean").tolist() == [2.0, 5.0]
    assert reduce_dims(v, m, "sum").tolist() == [4.0, 0.0]
    assert reduce_dims(v, m, "mean").tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="mask shape"):
        reduce_dims(v, m[:, :2])
    with pytest.raises(ValueError, match="dim_reduce"):
        reduce_dims(v, how="max")


def test_multiple_terms_sum_into_one_gap():
    a = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([0.5, 0.25])
    loss, _, gap = get_weighting("uniform")([Term(a), Term(b)])
    assert gap.tolist() == [2.5, 2.25]
    assert loss.item() == pytest.approx(2.375)


def test_pad_nll_and_loss_match_eq7():
    err = torch.tensor([[0.5, 2.0], [1.0, 0.1], [3.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[0.2, -1.0], [0.0, 1.5], [-0.3, 0.4]], dtype=torch.float64)
    nll = pad_nll(err, s)
    for i in range(3):
        for d in range(2):
            sigma2 = math.exp(s[i, d].item()) + 1e-6  # variance floor
            assert nll[i, d].item() == pytest.approx(err[i, d].item() / sigma2 + math.log(sigma2))
    for how in ("sum", "mean"):
        loss, w, _ = get_weighting("pad", dim_reduce=how)([Term(err, None, s)])
        per = [sum(nll[i].tolist()) / (1 if how == "sum" else 2) for i in range(3)]
        assert loss.item() == pytest.approx(sum(per) / 3)
        inv = [sum(1 / (math.exp(v) + 1e-6) for v in s[i].tolist()) / 2 for i in range(3)]
        assert w.tolist() == pytest.approx([v / sum(inv) for v in inv])
    # one σ per sample, broadcast over dimensions
    s1 = torch.tensor([[0.3], [-0.2], [1.0]], dtype=torch.float64)
    loss, _, _ = get_weighting("pad", dim_reduce="sum")([Term(err, None, s1)])
    v1 = [math.exp(s1[i, 0].item()) + 1e-6 for i in range(3)]
    ref = sum(sum(e / v1[i] + math.log(v1[i]) for e in err[i].tolist()) for i in range(3)) / 3
    assert loss.item() == pytest.approx(ref)


def test_pad_minimiser_is_log_squared_error():
    """For fixed errors, Eq. 7 is minimised at σ² = (f_s − y)²: larger gaps ⇒ larger variance."""
    err = torch.tensor([[0.04, 0.25, 1.0, 4.0]], dtype=torch.float64)
    s = torch.zeros_like(err, requires_grad=True)
    opt = torch.optim.LBFGS([s], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = pad_nll(err, s).sum()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(s.detach().exp() + 1e-6, err, rtol=1e-4, atol=1e-6)


def test_pad_masked_elements_do_not_count():
    err = torch.tensor([[1.0, 100.0]])
    s = torch.zeros(1, 2, requires_grad=True)
    m = torch.tensor([[1.0, 0.0]])
    loss, _, _ = get_weighting("pad", dim_reduce="mean")([Term(err, m, s)])
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert s.grad[0, 1].item() == 0.0


def test_pad_l2_stage_then_pad():
    err = torch.tensor([[1.0, 3.0]])
    s = torch.full((1, 2), 0.5, requires_grad=True)
    pad = get_weighting("pad", l2_stage_steps=10, dim_reduce="sum")
    loss, _, _ = pad([Term(err, None, s)], step=9)
    assert loss.item() == pytest.approx(4.0)  # plain L2 (sum over dims)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum().item() == 0.0  # in the graph, zero gradient
    loss, _, _ = pad([Term(err, None, s)], step=10)
    v = math.exp(0.5) + 1e-6
    assert loss.item() == pytest.approx(4.0 / v + 2 * math.log(v))


def test_pad_variance_floor_keeps_loss_finite():
    err = torch.tensor([[1.0, 0.0]])
    s = torch.tensor([[-500.0, 500.0]], requires_grad=True)
    loss, w, _ = get_weighting("pad", var_eps=1e-3, dim_reduce="sum")([Term(err, None, s)])
    assert torch.isfinite(loss) and torch.isfinite(w).all()
    assert loss.item() == pytest.approx(1 / 1e-3 + math.log(1e-3) + 500.0, rel=1e-5)
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_pad_refuses_terms_without_logvar():
    with pytest.raises(ValueError, match="log-variance"):
        get_weighting("pad")([Term(torch.ones(2, 3))])
    with pytest.raises(ValueError, match="log-variance shape"):
        pad_nll(torch.ones(2, 3), torch.ones(2, 2))


def test_warmup_factor():
    assert [warmup_factor(s, 4) for s in (0, 1, 2, 4, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    with pytest.raises(ValueError):
        warmup_factor(1, -1)


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="unknown weighting"):
        get_weighting("focal")
    with pytest.raises(ValueError, match="bad options"):
        get_weighting("soft_exp", alpha=2)
    for name, opts in [("soft_exp", {"T": 0}), ("soft_poly", {"alpha": -1}), ("hard_discarding", {"fraction": 1.0})]:
        with pytest.raises(ValueError):
            get_weighting(name, **opts)
