"""AdaDistill ("AdaDistill: Adaptive Knowledge Distillation for Deep Face Recognition") against a
direct, slow implementation: the adaptive EMA of the teacher class centres (repeated classes
included) and the margin-softmax loss on them, over two steps."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.losses.distiller import Distiller, Features

torch.set_num_threads(1)


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _slow_update(W, s, t, y):
    """The centres after one batch: each sample proposes α·W_y + (1 − α)·t̂ from the old centre."""
    proposals = {}
    for si, ti, c in zip(s, t, y):
        sh, th, w = _unit(si), _unit(ti), W[c]
        lam = min(1.0, max(1e-6, _dot(_unit(w), th)))
        alpha = min(1.0, max(1e-6, max(-1.0, min(1.0, _dot(sh, th))) * lam))
        proposals.setdefault(c, []).append([alpha * a + (1 - alpha) * b for a, b in zip(w, th)])
    W = [list(w) for w in W]
    for c, props in proposals.items():
        W[c] = [sum(col) / len(props) for col in zip(*props)]
    return W


def _slow_margin_ce(W, s, y, scale, margin, kind):
    out = []
    for si, c in zip(s, y):
        cos = [_dot(_unit(si), _unit(w)) for w in W]
        target = math.cos(math.acos(cos[c]) + margin) if kind == "arcface" else cos[c] - margin
        logits = [scale * (target if j == c else v) for j, v in enumerate(cos)]
        m = max(logits)
        out.append(m + math.log(sum(math.exp(v - m) for v in logits)) - logits[c])
    return out


@pytest.mark.parametrize("kind,margin", [("arcface", 0.45), ("cosface", 0.35)])
def test_adadistill_matches_loop_over_two_steps(kind, margin):
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 2, 2, 4, 0, 1])  # classes 0 and 2 twice, 3 never
    d = Distiller("adadistill", num_classes=5, student_dim=3, teacher_dim=3, margin=margin, margin_type=kind, scale=8)
    d = d.double()
    W = d.loss.centres.tolist()
    for _ in range(2):
        s = torch.randn(6, 3, generator=g, dtype=torch.float64)
        t = torch.randn(6, 3, generator=g, dtype=torch.float64)
        loss, _ = d(Features(s, labels=y), Features(t))
        W = _slow_update(W, s.tolist(), t.tolist(), y.tolist())
        for got, ref in zip(d.loss.centres.tolist(), W):
            assert got == pytest.approx(ref, rel=1e-10, abs=1e-14)
        ref_loss = _slow_margin_ce(W, s.tolist(), y.tolist(), 8.0, margin, kind)
        assert d.per_sample_stats["gap"].tolist() == pytest.approx(ref_loss, rel=1e-6)
        assert loss.item() == pytest.approx(sum(ref_loss) / 6, rel=1e-6)


def test_adadistill_projection_gradients_eval_and_config():
    g = torch.Generator().manual_seed(1)
    d = Distiller.from_config({"loss": "adadistill"}, 4, 6, num_classes=7)
    assert d.projection is not None and d.loss.centres.shape == (7, 6)
    s = torch.randn(5, 4, generator=g, requires_grad=True)
    t, y = torch.randn(5, 6, generator=g), torch.tensor([1, 2, 3, 4, 6])
    loss, _ = d(Features(s, labels=y), Features(t))
    loss.backward()
    assert torch.isfinite(s.grad).all() and d.projection.weight.grad is not None
    assert not d.loss.centres.requires_grad and "loss.centres" in d.state_dict()
    before = d.loss.centres.clone()
    d.eval()(Features(s, labels=y), Features(t))
    assert torch.equal(d.loss.centres, before)  # the centres move only in training
    d.train()
    with pytest.raises(ValueError, match="num_classes"):
        Distiller("adadistill", student_dim=4, teacher_dim=4)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        d(Features(s, labels=torch.tensor([0, 1, 2, 3, 7])), Features(t))


def _ddp_worker(rank, world, port, out_dir):
    import os

    import torch.distributed as tdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial centres on both ranks
        d = Distiller("adadistill", num_classes=5, student_dim=3, teacher_dim=3)
        s, t, y = _ddp_batch()
        half = slice(rank * 3, rank * 3 + 3)  # each rank sees its half of the batch
        d(Features(s[half], labels=y[half]), Features(t[half]))
        torch.save(d.loss.centres, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def _ddp_batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g), torch.tensor([0, 2, 1, 2, 4, 0])


@pytest.mark.slow  # two spawned processes
def test_ddp_replicas_apply_the_update_of_the_whole_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = Distiller("adadistill", num_classes=5, student_dim=3, teacher_dim=3)
    s, t, y = _ddp_batch()
    single(Features(s, labels=y), Features(t))
    for r in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"r{r}.pt"), single.loss.centres)
