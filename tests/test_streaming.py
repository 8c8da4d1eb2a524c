import numpy as np
import pytest
import torch

from facekd.evaluate.streaming import streaming_tar_at_far
from facekd.evaluate.verification import tar_at_far

FARS = (1e-5, 1e-4, 1e-3, 1e-2, 0.3)


def _clustered(rng, n, d, nid, noise):
    centers = rng.normal(size=(nid, d))
    labels = rng.integers(0, nid, n)
    return (centers[labels] + noise * rng.normal(size=(n, d))).astype(np.float32), labels


@pytest.mark.slow
def test_matches_exact_all_pairs():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x, y = _clustered(rng, 2000, 16, 400, 1.2)
    res = streaming_tar_at_far(x, y, FARS, chunk=384, nbins=4096)
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), 1)
    scores = np.einsum("ij,ij->i", xn[i], xn[j])
    ref = tar_at_far(scores, y[i] == y[j], FARS, "strict")
    assert res.n_impostor == ref[0].n_impostor and res.n_genuine == ref[0].n_genuine
    for got, want in zip(res.tar_at_far, ref):
        assert got.threshold == pytest.approx(want.threshold, abs=1e-6)
        assert got.tar == pytest.approx(want.tar, abs=2.0 / res.n_genuine)  # float32 vs float64 scores
        assert got.achieved_far <= got.far
    assert res.pairs_per_second > 0
    assert len(res.to_dict()["tar_at_far"]) == len(FARS)


def _grid_vectors(rng, n, d=12):
    """Unit vectors with four ±0.5 entries: every cosine is an exact multiple of 0.25 (heavy ties)."""
    x = np.zeros((n, d), np.float32)
    for r in range(n):
        x[r, rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


@pytest.mark.parametrize("bipartite", [False, True])
def test_exact_with_ties(bipartite):
    rng = np.random.default_rng(1)
    x, y = _grid_vectors(rng, 300), rng.integers(0, 40, 300)
    if bipartite:
        o, yo = _grid_vectors(rng, 170), rng.integers(0, 40, 170)
        res = streaming_tar_at_far(x, y, FARS, other=o, other_labels=yo, chunk=64, nbins=512)
        scores, same = (x @ o.T).ravel(), (y[:, None] == yo[None, :]).ravel()
    else:
        res = streaming_tar_at_far(x, y, FARS, chunk=64, nbins=512)
        i, j = np.triu_indices(300, 1)
        scores, same = np.sum(x[i] * x[j], 1), y[i] == y[j]
    for got, want in zip(res.tar_at_far, tar_at_far(scores, same, FARS, "strict")):
        assert (got.threshold, got.tar, got.achieved_far) == (want.threshold, want.tar, want.achieved_far)


def test_errors():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="genuine"):
        streaming_tar_at_far(x, [0, 1, 2])
    with pytest.raises(ValueError, match="labels"):
        streaming_tar_at_far(x, [0, 1])
    with pytest.raises(ValueError, match="FAR"):
        streaming_tar_at_far(x, [0, 0, 1], fars=(0,))


def _ddp_worker(rank, world, init_file, out_dir):
    import json

    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rng = np.random.default_rng(3)
        x, y = _clustered(rng, 500, 8, 60, 1.0)
        res = streaming_tar_at_far(x, y, FARS, chunk=64, nbins=256, device="cpu")
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(res.to_dict(), f)
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_ddp_shards_match_single_process(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rng = np.random.default_rng(3)
    x, y = _clustered(rng, 500, 8, 60, 1.0)
    single = streaming_tar_at_far(x, y, FARS, chunk=64, nbins=256, device="cpu").to_dict()
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got["n_impostor"] == single["n_impostor"] and got["n_genuine"] == single["n_genuine"]
        assert got["tar_at_far"] == single["tar_at_far"]
