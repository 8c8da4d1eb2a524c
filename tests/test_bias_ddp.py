"""Sharded density and Extrinsic Sampling search: 2 gloo processes on CPU give the single-process
result (one spawn serves every test of this module)."""

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from facekd.bias import angular_kde

H = math.radians(25)
LABELS = np.arange(37) % 5  # identity cells for the ivf density


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 8))  # odd N: uneven shards
    x[:15] = x[0] + 0.2 * x[:15]
    w = rng.integers(0, 4, 37).astype(float)
    return x.astype(np.float32), w


def _worker(rank, world, port, out_dir):
    from facekd.bias.nearest import nearest_to_random_directions

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, w = _data()
        exact = angular_kde(x, H, w, "exact", truncate_tol=0, progress=False)
        knn = angular_kde(x, H, None, "knn", k=10, return_result=True, progress=False)
        cells = angular_kde(x, H, w, "knn", index="ivf", labels=LABELS, nprobe=2, progress=False)
        np.save(os.path.join(out_dir, f"r{rank}.npy"), np.stack([exact, knn.density, knn.truncation_bound, cells]))
        search = _Counting(_unit(x))
        rows = nearest_to_random_directions(search, x.shape[1], NUM, 4)
        np.save(os.path.join(out_dir, f"es{rank}.npy"), np.r_[rows, search.searched])
    finally:
        tdist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.slow
def test_two_gloo_ranks_match_single_process(ranks_out):
    tmp_path = ranks_out
    x, w = _data()
    exact = angular_kde(x, H, w, "exact", truncate_tol=0, progress=False)
    knn = angular_kde(x, H, None, "knn", k=10, return_result=True, progress=False)
    cells = angular_kde(x, H, w, "knn", index="ivf", labels=LABELS, nprobe=2, progress=False)
    single = np.stack([exact, knn.density, knn.truncation_bound, cells])
    for r in range(2):
        got = np.load(tmp_path / f"r{r}.npy")
        assert got.shape == (4, 37)
        np.testing.assert_allclose(got, single, rtol=1e-6, atol=1e-12)


class _Counting:
    """A search that records how many directions this process searched."""

    def __init__(self, x):
        from facekd.bias.nearest import FlatSearch

        self.inner, self.searched = FlatSearch(x), 0

    def search(self, q):
        self.searched += len(q)
        return self.inner.search(q)


NUM = 2 * 65536 + 500  # three direction blocks: rank 0 searches two, rank 1 one


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.slow
def test_extrinsic_search_is_shared_out_over_ranks(ranks_out):
    from facekd.bias.nearest import nearest_to_random_directions

    x, _ = _data()
    single = nearest_to_random_directions(_Counting(_unit(x)), x.shape[1], NUM, 4)
    got = [np.load(ranks_out / f"es{r}.npy") for r in range(2)]
    for g in got:
        assert np.array_equal(g[:-1], single)  # every rank returns the whole list
    assert [int(g[-1]) for g in got] == [2 * 65536, 500]  # each direction searched once
