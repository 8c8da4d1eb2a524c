import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from facekd.evaluate.verification import (
    RankedScores,
    accuracy_flip,
    evaluate_pairs,
    format_insightface_line,
    plot_roc,
    roc,
    tar_at_far,
    verification_accuracy,
)

FARS = (0.3, 0.1, 0.05, 0.01, 1e-3)


def _scores(rng, ng, ni, ties: bool):
    g = rng.normal(1.0, 1.0, ng)
    i = rng.normal(0.0, 1.0, ni)
    if ties:  # a coarse grid makes many genuine/impostor ties
        g, i = np.round(g * 4) / 4, np.round(i * 4) / 4
    s = np.concatenate([g, i])
    y = np.concatenate([np.ones(ng, bool), np.zeros(ni, bool)])
    p = rng.permutation(s.size)
    return s[p], y[p]


def slow_strict(scores, issame, far):
    """Max TAR over every threshold τ in scores ∪ {-inf} with #(impostor > τ) ≤ floor(far·|I|)."""
    gen = [s for s, y in zip(scores, issame) if y]
    imp = [s for s, y in zip(scores, issame) if not y]
    k = math.floor(round(far * len(imp), 9))
    best = None
    for tau in [*sorted(set(scores.tolist())), -math.inf]:
        if sum(1 for s in imp if s > tau) <= k:
            tar = sum(1 for s in gen if s > tau) / len(gen)
            if best is None or tar > best[0] or (tar == best[0] and tau < best[1]):
                best = (tar, tau)
    return best


def insightface_reference(scores, issame, fars):
    """eval_ijbc.py, line for line (min over zip instead of argmin)."""
    fpr, tpr, thr = roc_curve(issame.astype(int), scores)
    fpr, tpr, thr = np.flipud(fpr), np.flipud(tpr), np.flipud(thr)
    out = []
    for x in fars:
        _, i = min(list(zip(abs(fpr - x), range(len(fpr)))))
        out.append((tpr[i], fpr[i], thr[i]))
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_strict_matches_slow(ties):
    rng = np.random.default_rng(0 if not ties else 1)
    s, y = _scores(rng, 60, 200, ties)
    for t in tar_at_far(s, y, FARS, "strict"):
        tar, _ = slow_strict(s, y, t.far)
        assert t.tar == pytest.approx(tar, abs=0)
        # several τ may give the same TAR; ours must be feasible and give that TAR
        imp = s[~y]
        assert np.sum(imp > t.threshold) <= math.floor(t.far * imp.size)
        assert t.achieved_far <= t.far + 1e-12
        assert t.n_genuine == 60 and t.n_impostor == 200
        assert t.expected_false_accepts == pytest.approx(t.far * 200)
        assert t.threshold == pytest.approx(np.sort(imp)[::-1][math.floor(round(t.far * 200, 9))])


def test_strict_tie_at_threshold_is_conservative():
    # 10 impostors all at 0.5: k=1 cannot accept any of them, so τ = 0.5 and nothing at 0.5 passes
    s = np.array([0.5] * 10 + [0.5, 0.7])
    y = np.array([False] * 10 + [True, True])
    (t,) = tar_at_far(s, y, (0.1,), "strict")
    assert t.threshold == 0.5 and t.tar == 0.5 and t.achieved_far == 0.0
    (t,) = tar_at_far(s, y, (1.0,), "strict")
    assert t.threshold == -math.inf and t.tar == 1.0


@pytest.mark.parametrize("ties", [False, True])
def test_insightface_matches_eval_ijbc(ties):
    rng = np.random.default_rng(2 if not ties else 3)
    s, y = _scores(rng, 80, 300, ties)
    ours = tar_at_far(s, y, FARS, "insightface")
    for t, (tpr, fpr, thr) in zip(ours, insightface_reference(s, y, FARS)):
        assert (t.tar, t.achieved_far, t.threshold) == (tpr, fpr, thr)
        if np.isfinite(t.threshold):  # the vertex is the (≥ τ) operating point, counted directly
            assert t.tar == np.mean(s[y] >= t.threshold)
            assert t.achieved_far == np.mean(s[~y] >= t.threshold)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_sort_roc_equals_sklearn(ties, dtype):
    """The ROC merged from the two sorted classes is sklearn's roc_curve / roc_auc_score, bit for bit."""
    rng = np.random.default_rng(4 if not ties else 5)
    s, y = _scores(rng, 300, 5000, ties)
    s = s.astype(dtype)
    ranked = RankedScores(s, y)
    fpr, tpr, thr = roc_curve(y, s)
    r = ranked.roc
    np.testing.assert_array_equal(r.fpr, fpr)
    np.testing.assert_array_equal(r.tpr, tpr)
    np.testing.assert_array_equal(r.thresholds, thr)
    assert r.auc == roc_auc_score(y, s)
    # the same object serves both conventions, as the per-call function does
    for conv in ("strict", "insightface"):
        assert ranked.tar_at_far(FARS, conv) == tar_at_far(s, y, FARS, conv)
    # nearest-vertex search: targets on vertices and exactly between two (ties) as eval_ijbc resolves them
    vertices = np.unique(fpr[fpr > 0])[:200]
    fars = np.concatenate([vertices, (vertices[1:] + vertices[:-1]) / 2])
    for t, (tpr_ref, fpr_ref, thr_ref) in zip(
        ranked.tar_at_far(fars, "insightface"), insightface_reference(s, y, fars)
    ):
        assert (t.tar, t.achieved_far, t.threshold) == (tpr_ref, fpr_ref, thr_ref)


def test_tar_at_far_errors():
    with pytest.raises(ValueError, match="both genuine and impostor"):
        tar_at_far([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="convention"):
        tar_at_far([0.1, 0.2], [True, False], convention="nearest")
    with pytest.raises(ValueError, match="NaN"):
        tar_at_far([np.nan, 0.2], [True, False])
    with pytest.raises(ValueError, match="shape"):
        tar_at_far([0.1, 0.2, 0.3], [True, False])


def insightface_calculate_roc(emb1, emb2, issame, nfolds):
    """AT/eval/verification.py::calculate_roc + calculate_accuracy, loops as written there."""
    thresholds = np.arange(0, 4, 0.01)
    dist = np.sum(np.square(np.subtract(emb1, emb2)), 1)
    acc = np.zeros(nfolds)
    for f, (train, test) in enumerate(KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(issame)))):
        acc_train = np.zeros(len(thresholds))
        for ti, th in enumerate(thresholds):
            pred = np.less(dist[train], th)
            act = issame[train]
            tp = np.sum(np.logical_and(pred, act))
            tn = np.sum(np.logical_and(np.logical_not(pred), np.logical_not(act)))
            acc_train[ti] = float(tp + tn) / dist[train].size
        best = np.argmax(acc_train)
        pred = np.less(dist[test], thresholds[best])
        act = issame[test]
        tp = np.sum(np.logical_and(pred, act))
        tn = np.sum(np.logical_and(np.logical_not(pred), np.logical_not(act)))
        acc[f] = float(tp + tn) / dist[test].size
    return acc


def _pair_embeddings(rng, n, d=8):
    base = rng.normal(size=(n, d)).astype(np.float32)
    issame = rng.random(n) < 0.5
    other = np.where(issame[:, None], base + 0.9 * rng.normal(size=(n, d)), rng.normal(size=(n, d))).astype(np.float32)
    return base, other, issame


def test_verification_accuracy_matches_insightface():
    rng = np.random.default_rng(4)
    a, b, y = _pair_embeddings(rng, 120)
    ref = insightface_calculate_roc(normalize(a), normalize(b), y, 10)
    got = verification_accuracy(a, b, y, nfolds=10)
    np.testing.assert_array_equal(got.fold_accuracies, ref)
    assert got.mean == pytest.approx(ref.mean()) and got.std == pytest.approx(ref.std())
    assert got.thresholds.shape == (10,)


def test_accuracy_flip_and_log_line():
    rng = np.random.default_rng(5)
    a, b, y = _pair_embeddings(rng, 50)
    orig = np.empty((100, 8), np.float32)
    orig[0::2], orig[1::2] = 3 * a, 3 * b
    flip = (orig + 0.1 * rng.normal(size=orig.shape)).astype(np.float32)
    r = accuracy_flip(orig, flip, y, nfolds=5)
    summed = normalize(orig + flip)
    ref = insightface_calculate_roc(summed[0::2], summed[1::2], y, 5)
    assert r.mean == pytest.approx(ref.mean())
    norms = [np.linalg.norm(e) for emb in (orig, flip) for e in emb]
    assert r.xnorm == pytest.approx(sum(norms) / len(norms), rel=1e-6)
    line = format_insightface_line("lfw", 2000, 0.998166, 0.002291, xnorm=21.5, highest=0.998166)
    assert line.split("\n") == [
        "[lfw][2000]XNorm: 21.500000",
        "[lfw][2000]Accuracy-Flip: 0.99817+-0.00229",
        "[lfw][2000]Accuracy-Highest: 0.99817",
    ]


def test_evaluate_pairs_groups_and_hard(tmp_path):
    rng = np.random.default_rng(6)
    n, d = 60, 8
    centers = rng.normal(size=(12, d))
    labels = np.repeat(np.arange(12), 5)
    emb = (centers[labels] + 0.6 * rng.normal(size=(n, d))).astype(np.float32)
    groups = labels % 3
    a, b = np.triu_indices(n, 1)
    pairs = SimpleNamespace(a=a, b=b, issame=labels[a] == labels[b], hard=rng.random(a.size) < 0.3)
    res = evaluate_pairs(emb, pairs, groups=groups, fars=(0.1, 0.01))
    json.dumps(res, allow_nan=True)
    e = normalize(emb)
    scores = np.sum(e[a] * e[b], 1)
    strict = tar_at_far(scores, pairs.issame, (0.1, 0.01))
    assert res["tar_at_far"][0]["tar"] == strict[0].tar
    assert res["n_genuine"] == int(pairs.issame.sum())
    for grp in range(3):
        r = res["groups"][str(grp)]
        gen = [i for i in range(a.size) if pairs.issame[i] and groups[a[i]] == grp]
        imp = [i for i in range(a.size) if not pairs.issame[i] and groups[a[i]] == grp and groups[b[i]] == grp]
        assert (r["n_genuine"], r["n_impostor"]) == (len(gen), len(imp))
        tau = strict[1].threshold
        assert r["at_global_threshold"][1]["tar"] == pytest.approx(np.mean(scores[gen] > tau))
    hg = pairs.hard & pairs.issame
    assert res["hard"]["tar_at_global_threshold"][0]["tar"] == pytest.approx(np.mean(scores[hg] > strict[0].threshold))
    with pytest.raises(ValueError, match="groups"):
        evaluate_pairs(emb, pairs, groups=groups[:5])

    r = roc(scores, pairs.issame)
    assert 0.5 < r.auc <= 1.0
    plot_roc({"model": (scores, pairs.issame)}, tmp_path / "roc.png", title="t")
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verification_accuracy_grid_ties():
    # distances exactly 0 (identical), 2 (orthogonal) and 4 (opposite): ties with the threshold grid
    rng = np.random.default_rng(7)
    eye = np.eye(4, dtype=np.float32)
    a = eye[rng.integers(0, 4, 60)]
    kind = rng.integers(0, 3, 60)
    b = np.where(kind[:, None] == 0, a, np.where(kind[:, None] == 1, np.roll(a, 1, axis=1), -a)).astype(np.float32)
    y = (kind == 0) | (rng.random(60) < 0.2)
    ref = insightface_calculate_roc(normalize(a), normalize(b), y, 6)
    np.testing.assert_array_equal(verification_accuracy(a, b, y, nfolds=6).fold_accuracies, ref)
