import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facekd.data.pk_sampler import PKSampler
from facekd.losses.metric import CenterLoss, TripletLoss, batch_hard_triplet


def slow_triplet(x, y, margin):
    x = x.double()
    out = []
    for i in range(len(y)):
        dists = [math.sqrt(sum((x[i, c] - x[j, c]).item() ** 2 for c in range(x.shape[1]))) for j in range(len(y))]
        pos = [dists[j] for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [dists[j] for j in range(len(y)) if y[j] != y[i]]
        if not pos or not neg:
            out.append(0.0)
            continue
        gap = max(pos) - min(neg)
        out.append(math.log1p(math.exp(gap)) if margin is None else max(0.0, gap + margin))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_matches_loop(margin):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])  # label 4 has no positive
    got = batch_hard_triplet(x, y, margin)
    assert got.shape == (12,)
    torch.testing.assert_close(got, slow_triplet(x.detach(), y, margin).to(got.dtype), atol=1e-9, rtol=1e-9)
    assert got[-1] == 0
    got.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(TripletLoss(margin)(x, y), got)


def test_triplet_normalize_and_errors():
    x = torch.randn(6, 3) * 10
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(
        batch_hard_triplet(x, y, normalize=True), batch_hard_triplet(x / x.norm(dim=1, keepdim=True), y)
    )
    with pytest.raises(ValueError, match="labels"):
        batch_hard_triplet(x, y[:3])


def test_center_loss_matches_loop():
    torch.manual_seed(0)
    cl = CenterLoss(4, 3)
    x = torch.randn(5, 3)
    y = torch.tensor([0, 3, 3, 1, 2])
    got = cl(x, y)
    ref = torch.tensor([sum((x[i, c] - cl.centers[y[i], c]).item() ** 2 for c in range(3)) for i in range(5)])
    torch.testing.assert_close(got, ref)
    got.mean().backward()
    assert cl.centers.grad[3].abs().sum() > 0
    with pytest.raises(ValueError, match="labels"):
        cl(x, torch.tensor([0, 1, 2, 3, 4]))


def test_pk_sampler_batches():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    s = PKSampler(labels, p=3, k=4, seed=1, rank=0, world_size=1)
    batches = s.batches()
    assert batches
    n_chunks = sum(max(1, n // 4) for n in range(1, 11))  # short identities are padded to one chunk
    assert n_chunks // 3 - 2 <= len(batches) <= n_chunks // 3
    for b in batches:
        assert b.shape == (12,)
        ids, counts = np.unique(labels[b], return_counts=True)
        assert len(ids) == 3 and (counts == 4).all()
    # rows are not repeated across an epoch except for identities with fewer than K images
    flat = np.concatenate(batches)
    big = np.isin(labels[flat], np.arange(3, 10))
    assert len(np.unique(flat[big])) == big.sum()
    # deterministic per (seed, epoch); different across epochs
    assert all((a == b).all() for a, b in zip(batches, PKSampler(labels, 3, 4, seed=1).batches()))
    s.set_epoch(1)
    assert not all((a == b).all() for a, b in zip(batches, s.batches()))
    assert list(s) == np.concatenate(s.batches()).tolist() and len(s) == len(list(s))
    # works with a DataLoader: every batch is one PK batch
    dl = DataLoader(torch.arange(len(labels)), batch_size=12, sampler=s, drop_last=True)
    for b in dl:
        assert len(np.unique(labels[b.numpy()])) == 3


def test_pk_sampler_ddp_sharding():
    labels = np.repeat(np.arange(20), 6)
    all_b = PKSampler(labels, 4, 3, seed=5, rank=0, world_size=1).batches()
    shards = [PKSampler(labels, 4, 3, seed=5, rank=r, world_size=3) for r in range(3)]
    lens = {len(s) for s in shards}
    assert len(lens) == 1  # equal length on every rank
    usable = len(all_b) - len(all_b) % 3
    got = [list(s) for s in shards]
    for r in range(3):
        assert got[r] == np.concatenate(all_b[r:usable:3]).tolist()
    assert not set(got[0]) & set(got[1])
    with pytest.raises(ValueError, match="identities"):
        PKSampler(labels[:6], 2, 3)
