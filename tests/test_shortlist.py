import itertools

import numpy as np
import pytest

from facekd.bias.kde import _self_first_by_cosine
from facekd.bias.shortlist import BF16_COS_ERROR, Shortlist, resolve_dtype


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _slow_top(q, base, k):
    return [set(np.argsort(-(base @ v))[:k].tolist()) for v in q]


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_shortlist_matches_a_direct_ranking_up_to_rounding(dtype):
    rng = np.random.default_rng(0)
    base, q = _unit(rng, 300, 64), _unit(rng, 50, 64)
    got = Shortlist(base, dtype).search(q, 10)
    assert got.shape == (50, 10) and got.dtype == np.int64
    scores = q.astype(np.float64) @ base.T.astype(np.float64)
    tenth = np.sort(scores, 1)[:, -10]
    slack = 0.0 if dtype == "float32" else 2 * BF16_COS_ERROR
    for row, ids in enumerate(got):  # every listed id is within rounding of the true top 10
        assert (scores[row, ids] >= tenth[row] - slack - 1e-6).all()
    if dtype == "float32":
        assert [set(r.tolist()) for r in got] == _slow_top(q, base, 10)


def test_shortlist_refuses_bad_arguments():
    base = _unit(np.random.default_rng(1), 5, 8)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        Shortlist(base, "float32").search(base, 6)
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("fp16")
    assert resolve_dtype("auto") in ("bf16", "float32")


def test_cell_graph_puts_each_cell_first_and_the_rest_by_cosine():
    dirs = _unit(np.random.default_rng(2), 6, 16)
    ids = np.array([[3, 1, 2], [0, 1, 5]])  # cell 0 missing from its own list: it replaces the farthest
    got, got_cos = _self_first_by_cosine(dirs, ids.copy(), 0)
    assert got[:, 0].tolist() == [0, 1]
    cos = [[float(dirs[r] @ dirs[c]) for c in got[r, 1:]] for r in range(2)]
    np.testing.assert_allclose(got_cos[:, 1:], cos, rtol=1e-6)
    assert (got_cos[:, 0] == 1.0).all()
    assert all(a >= b for row in cos for a, b in itertools.pairwise(row))
    far0 = min((1, 2, 3), key=lambda c: float(dirs[0] @ dirs[c]))
    assert far0 not in got[0].tolist()
