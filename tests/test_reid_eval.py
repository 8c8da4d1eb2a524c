import numpy as np
import pytest

from facekd.evaluate.reid import compute_distance, evaluate_reid, evaluate_reid_features, recall_at_k


def eval_market1501_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """fast-reid's python eval_market1501, as written there (stable sort for determinism)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, all_INP = [], [], []
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][~remove]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_INP.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        cmc = cmc[:max_rank]
        all_cmc.append(np.pad(cmc, (0, max_rank - cmc.size), constant_values=1))
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(raw_cmc.cumsum())]
        all_AP.append((np.asarray(tmp_cmc) * raw_cmc).sum() / raw_cmc.sum())
    return np.asarray(all_cmc, np.float64).mean(0), float(np.mean(all_AP)), float(np.mean(all_INP)), len(all_AP)


def test_known_answer():
    # one query (pid 1, cam 0); gallery sorted by distance:
    # g0 pid1 cam0 (removed), g1 pid2, g2 pid1 cam1 (hit at rank 2), g3 pid3, g4 pid1 cam2 (hit at rank 4)
    dist = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    res = evaluate_reid(dist, [1], [1, 2, 1, 3, 1], [0], [0, 1, 1, 1, 2], max_rank=5)
    assert res.cmc.tolist() == [0, 1, 1, 1, 1][: res.cmc.size]
    assert res.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res.mINP == pytest.approx(2 / 4)
    d = res.to_dict()
    assert d["rank1"] == 0.0 and d["rank5"] == 1.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_reference_random(metric):
    rng = np.random.default_rng(0)
    npid, d = 15, 6
    centers = rng.normal(size=(npid, d))
    g_pids = rng.integers(0, npid, 120)
    g_cams = rng.integers(0, 3, 120)
    q_pids = rng.integers(0, npid + 2, 40)  # some queries have no match at all
    q_cams = rng.integers(0, 3, 40)
    gf = centers[g_pids] + 0.8 * rng.normal(size=(120, d))
    qf = np.concatenate([centers, rng.normal(size=(2, d))])[q_pids] + 0.8 * rng.normal(size=(40, d))
    dist = compute_distance(qf, gf, metric)
    ref_cmc, ref_map, ref_minp, nvalid = eval_market1501_reference(dist, q_pids, g_pids, q_cams, g_cams, 50)
    res = evaluate_reid_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric)
    np.testing.assert_allclose(res.cmc, ref_cmc)
    assert res.mAP == pytest.approx(ref_map) and res.mINP == pytest.approx(ref_minp)
    assert res.num_valid_queries == nvalid < 40
    # chunking must not change anything
    res2 = evaluate_reid(dist, q_pids, g_pids, q_cams, g_cams, chunk=7)
    np.testing.assert_allclose(res2.cmc, res.cmc)
    assert res2.mAP == pytest.approx(res.mAP) and res2.mINP == pytest.approx(res.mINP)


def test_distance_definitions():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(compute_distance(q, g, "cosine"), 1 - qn @ gn.T, atol=1e-6)
    sq = ((qn[:, None] - gn[None]) ** 2).sum(-1)
    np.testing.assert_allclose(compute_distance(q, g, "euclidean"), sq, atol=1e-5)
    raw = ((q[:, None] - g[None]) ** 2).sum(-1)
    np.testing.assert_allclose(compute_distance(q, g, "euclidean", normalize=False), raw, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="metric"):
        compute_distance(q, g, "l1")


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query"):
        evaluate_reid(np.zeros((1, 2)), [1], [1, 2], [0], [0, 0])


def test_recall_at_k_slow():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 5))
    y = rng.integers(0, 6, 30)
    got = recall_at_k(x, y, ks=(1, 4))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for k in (1, 4):
        hits = 0
        for i in range(30):
            sims = [(-(xn[i] @ xn[j]), j) for j in range(30) if j != i]
            nn = [j for _, j in sorted(sims)[:k]]
            hits += any(y[j] == y[i] for j in nn)
        assert got[k] == pytest.approx(hits / 30, abs=1e-6)


def test_eval_reid_command(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from facekd.evaluate.commands import register

    app = typer.Typer()
    register(app)
    rng = np.random.default_rng(3)
    gf, qf = rng.normal(size=(20, 4)), rng.normal(size=(5, 4))
    gp, qp = rng.integers(0, 4, 20), rng.integers(0, 4, 5)
    np.savez(tmp_path / "q.npz", features=qf, pids=qp, camids=np.zeros(5, int))
    np.savez(tmp_path / "g.npz", features=gf, pids=gp, camids=np.ones(20, int))
    r = CliRunner().invoke(
        app,
        [
            "eval-reid",
            "--query",
            str(tmp_path / "q.npz"),
            "--gallery",
            str(tmp_path / "g.npz"),
            "--out",
            str(tmp_path / "m.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    want = evaluate_reid_features(qf, gf, qp, gp, np.zeros(5), np.ones(20))
    assert json.loads((tmp_path / "m.json").read_text())["mAP"] == pytest.approx(want.mAP)
    np.savez(tmp_path / "bad.npz", features=qf)
    r = CliRunner().invoke(
        app, ["eval-reid", "--query", str(tmp_path / "bad.npz"), "--gallery", str(tmp_path / "g.npz")]
    )
    assert r.exit_code != 0 and "pids" in str(r.exception)
