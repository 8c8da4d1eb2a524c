import numpy as np
import pytest
import torch

from facekd.data.sampler import IndexListSampler


def test_fixed_list_is_yielded_in_order():
    idx = np.array([5, 3, 3, 0, 9], dtype=np.int64)
    s = IndexListSampler(idx)
    assert list(s) == [5, 3, 3, 0, 9]
    assert len(s) == 5


def test_shuffled_is_a_permutation_deterministic_per_seed_and_epoch():
    a, b = IndexListSampler.shuffled(50, seed=3), IndexListSampler.shuffled(50, seed=3)
    e0 = list(a)
    assert sorted(e0) == list(range(50))
    assert e0 == list(b)
    a.set_epoch(1)
    e1 = list(a)
    assert sorted(e1) == list(range(50)) and e1 != e0
    b.set_epoch(1)
    assert list(b) == e1  # resume: same (seed, epoch) -> same order
    assert list(IndexListSampler.shuffled(50, seed=4)) != e0


@pytest.mark.parametrize(
    "n,world,drop_last", [(10, 3, False), (10, 3, True), (7, 4, False), (2, 4, False), (12, 4, True)]
)
def test_sharding_matches_torch_distributed_sampler(n, world, drop_last):
    ds = list(range(n))
    union = []
    for r in range(world):
        ours = IndexListSampler(np.arange(n), rank=r, world_size=world, drop_last=drop_last)
        ref = torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=r, shuffle=False, drop_last=drop_last)
        assert list(ours) == list(ref)
        assert len(ours) == len(ref)
        union += list(ours)
    if not drop_last:
        assert set(union) == set(range(n))


def test_callable_regenerated_each_epoch_or_once():
    calls = []

    def fn(epoch):
        calls.append(epoch)
        return np.full(4, epoch, dtype=np.int64)

    s = IndexListSampler(fn, regenerate_each_epoch=True)
    assert list(s) == [0, 0, 0, 0]
    s.set_epoch(2)
    assert list(s) == [2, 2, 2, 2]
    assert calls == [0, 2]
    calls.clear()
    once = IndexListSampler(fn)
    once.set_epoch(5)
    assert list(once) == [0, 0, 0, 0] and calls == [0]


def test_resume_mid_epoch_skips_start_of_shard():
    s = IndexListSampler.shuffled(20, seed=1, rank=1, world_size=2)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=4)
    assert list(s) == full[4:] and len(s) == len(full) - 4


def test_dataloader_uses_the_list():
    data = torch.arange(100) * 10
    s = IndexListSampler(np.array([7, 1, 1, 42]))
    out = torch.cat(list(torch.utils.data.DataLoader(data, sampler=s, batch_size=3)))
    assert out.tolist() == [70, 10, 10, 420]


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match=r"index list\[1\] = 10 is out of range"):
        IndexListSampler(np.array([0, 10]), dataset_size=10)
    with pytest.raises(ValueError, match="out of range"):
        IndexListSampler(np.array([-1]))
    with pytest.raises(ValueError, match="1-D"):
        IndexListSampler(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="integers"):
        IndexListSampler(np.array([0.5]))
    with pytest.raises(ValueError, match="empty"):
        IndexListSampler(np.array([], np.int64))
    with pytest.raises(ValueError, match="needs a callable"):
        IndexListSampler(np.arange(3), regenerate_each_epoch=True)
    with pytest.raises(ValueError, match=r"fn\(0\)"):
        list(IndexListSampler(lambda e: np.array([1.5])))
