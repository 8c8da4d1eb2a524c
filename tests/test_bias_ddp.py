"""Sharded density: 2 gloo processes on CPU give the single-process result."""

import math
import os
import socket

import numpy as np
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from facekd.bias import angular_kde

H = math.radians(25)


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 8))  # odd N: uneven shards
    x[:15] = x[0] + 0.2 * x[:15]
    w = rng.integers(0, 4, 37).astype(float)
    return x.astype(np.float32), w


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, w = _data()
        exact = angular_kde(x, H, w, "exact", truncate_tol=0, progress=False)
        knn = angular_kde(x, H, None, "knn", k=10, return_result=True, progress=False)
        np.save(os.path.join(out_dir, f"r{rank}.npy"), np.stack([exact, knn.density, knn.truncation_bound]))
    finally:
        tdist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    x, w = _data()
    exact = angular_kde(x, H, w, "exact", truncate_tol=0, progress=False)
    knn = angular_kde(x, H, None, "knn", k=10, return_result=True, progress=False)
    single = np.stack([exact, knn.density, knn.truncation_bound])
    for r in range(2):
        got = np.load(tmp_path / f"r{r}.npy")
        assert got.shape == (3, 37)
        np.testing.assert_allclose(got, single, rtol=1e-6, atol=1e-12)
