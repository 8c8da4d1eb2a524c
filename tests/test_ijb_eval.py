import json

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from sklearn.preprocessing import normalize

from facekd.evaluate.ijb import evaluate_ijb, pair_scores, template_features, write_ijb_outputs


def eval_ijbc_reference(
    img_feats, faceness, templates, medias, p1, p2, label, use_norm_score, use_detector_score, use_flip_test
):
    """AT/eval_ijbc.py's main path, loops as written there (np.int → int)."""
    half = img_feats.shape[1] // 2
    x = img_feats[:, :half] + img_feats[:, half:] if use_flip_test else img_feats[:, :half]
    if not use_norm_score:
        x = x / np.sqrt(np.sum(x**2, -1, keepdims=True))
    if use_detector_score:
        x = x * faceness[:, np.newaxis]
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), x.shape[1]))
    for c, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats, face_medias = x[ind_t], medias[ind_t]
        unique_medias, counts = np.unique(face_medias, return_counts=True)
        media_feats = []
        for u, ct in zip(unique_medias, counts):
            (ind_m,) = np.where(face_medias == u)
            media_feats += [face_feats[ind_m]] if ct == 1 else [np.mean(face_feats[ind_m], axis=0, keepdims=True)]
        template_feats[c] = np.sum(np.array(media_feats), axis=0)
    template_norm = normalize(template_feats)
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for c, uqt in enumerate(unique_templates):
        template2id[uqt] = c
    score = np.zeros(len(p1))
    total = np.arange(len(p1))
    for s in [total[i : i + 7] for i in range(0, len(p1), 7)]:  # small batches to exercise batching
        score[s] = np.sum(template_norm[template2id[p1[s]]] * template_norm[template2id[p2[s]]], -1).flatten()
    fpr, tpr, _ = roc_curve(label, score)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    tars = [tpr[min(list(zip(abs(fpr - x), range(len(fpr)))))[1]] for x in [1e-3, 1e-2, 1e-1]]
    return score, tars


def _meta(rng, n_img=150, n_id=12, d=8):
    ids = rng.integers(0, n_id, n_img)
    centers = rng.normal(size=(n_id, d))
    feats = 5 * (centers[ids] + 0.7 * rng.normal(size=(n_img, d)))
    flips = feats + rng.normal(size=feats.shape)
    # templates of a single identity, ids 3..; several images share a media id
    templates = np.empty(n_img, np.int64)
    for i in range(n_img):
        templates[i] = 3 + ids[i] * 3 + rng.integers(0, 3)
    medias = rng.integers(100, 104, n_img)
    faceness = rng.uniform(0.3, 1.0, n_img)
    tids = np.unique(templates)
    p1, p2 = np.meshgrid(tids, tids, indexing="ij")
    keep = p1 < p2
    p1, p2 = p1[keep], p2[keep]
    label = ((p1 - 3) // 3 == (p2 - 3) // 3).astype(int)
    return feats.astype(np.float32), flips.astype(np.float32), faceness, templates, medias, p1, p2, label


@pytest.mark.parametrize("norm,det,flip", [(True, True, True), (False, False, False), (False, True, True)])
def test_matches_eval_ijbc(norm, det, flip):
    rng = np.random.default_rng(0)
    feats, flips, faceness, templates, medias, p1, p2, label = _meta(rng)
    ref_scores, ref_tars = eval_ijbc_reference(
        np.concatenate([feats, flips], 1).astype(np.float64),
        faceness,
        templates,
        medias,
        p1,
        p2,
        label,
        norm,
        det,
        flip,
    )
    res = evaluate_ijb(
        feats,
        templates,
        medias,
        p1,
        p2,
        label,
        features_flip=flips,
        faceness=faceness,
        flip="sum" if flip else "none",
        norm_score=norm,
        detector_score=det,
        fars=(1e-3, 1e-2, 1e-1),
    )
    np.testing.assert_allclose(res.scores, ref_scores, rtol=0, atol=1e-6)
    assert [t.tar for t in res.insightface] == pytest.approx(ref_tars, abs=0)
    assert res.settings["code"] == f"N{int(norm)}D{int(det)}F{int(flip)}"
    for t in res.strict:
        assert t.achieved_far <= t.far


def test_flip_concat_and_template_math():
    rng = np.random.default_rng(1)
    f, ff = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    cat = np.concatenate([f, ff], 1)
    x = cat / np.linalg.norm(cat, axis=1, keepdims=True)
    # template 7 = mean(media 1: rows 0, 1) + row 2 (media 2); template 9 = row 3
    ids, tf = template_features(
        f, [7, 7, 7, 9], [1, 1, 2, 1], features_flip=ff, flip="concat", norm_score=False, detector_score=False
    )
    assert ids.tolist() == [7, 9] and tf.dtype == np.float32
    v = (x[0] + x[1]) / 2 + x[2]
    np.testing.assert_allclose(tf[0], v / np.linalg.norm(v), rtol=1e-6)
    np.testing.assert_allclose(tf[1], x[3], rtol=1e-6)
    np.testing.assert_allclose(pair_scores(ids, tf, [9], [7]), [tf[0] @ tf[1]], rtol=1e-6)


@pytest.mark.slow
def test_errors_and_outputs(tmp_path):
    f = np.random.default_rng(2).normal(size=(4, 3))
    with pytest.raises(ValueError, match="features_flip"):
        template_features(f, [1, 1, 2, 2], [0, 0, 0, 0], flip="sum", detector_score=False)
    with pytest.raises(ValueError, match="faceness"):
        template_features(f, [1, 1, 2, 2], [0, 0, 0, 0], flip="none")
    with pytest.raises(ValueError, match="one per image"):
        template_features(f, [1, 1, 2], [0, 0, 0], flip="none", detector_score=False)
    ids, tf = template_features(f, [1, 1, 2, 2], [0, 0, 0, 0], flip="none", detector_score=False)
    with pytest.raises(ValueError, match="row 1: p2 template id 5"):
        pair_scores(ids, tf, [1, 2], [2, 5])
    with pytest.raises(ValueError, match="row 0: p1 template id -3"):
        pair_scores(ids, tf, [-3, 2], [2, 1])
    with pytest.raises(ValueError, match="row 1: p1 template id 1099511627776"):  # ids too far apart for a table
        pair_scores(np.array([1, 2**41]), tf, [1, 2**40], [2**41, 1])
    rng = np.random.default_rng(3)
    feats, flips, faceness, templates, medias, p1, p2, label = _meta(rng)
    res = evaluate_ijb(
        feats, templates, medias, p1, p2, label, features_flip=flips, faceness=faceness, fars=(1e-2, 1e-1)
    )
    write_ijb_outputs(res, tmp_path, "IJBC")
    assert np.load(tmp_path / "IJBC.npy").shape == (len(p1),)
    assert json.loads((tmp_path / "IJBC.json").read_text())["settings"]["code"] == "N1D1F1"
    assert (tmp_path / "IJBC_roc.png").stat().st_size > 0
    assert res.table().count("\n") == 3


@pytest.mark.slow
def test_eval_ijb_command(tmp_path):
    import typer
    from typer.testing import CliRunner

    from facekd.evaluate.commands import register

    rng = np.random.default_rng(4)
    feats, flips, faceness, templates, medias, p1, p2, label = _meta(rng, n_img=60)
    meta = tmp_path / "IJBB" / "meta"
    meta.mkdir(parents=True)
    names = [f"img/{i}.jpg" for i in range(60)]
    (meta / "ijbb_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in zip(names, templates, medias)))
    (meta / "ijbb_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in zip(p1, p2, label)))
    (meta / "ijbb_name_5pts_score.txt").write_text(
        "".join(f"{n} " + " ".join(["50.0"] * 10) + f" {s:.6f}\n" for n, s in zip(names, faceness))
    )
    np.save(tmp_path / "f.npy", np.concatenate([feats, flips], 1))
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(
        app,
        [
            "eval-ijb",
            "--features",
            str(tmp_path / "f.npy"),
            "--halves",
            "--meta",
            str(tmp_path / "IJBB"),
            "--target",
            "IJBB",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert r.exit_code == 0, r.output
    want = evaluate_ijb(
        feats, templates, medias, p1, p2, label, features_flip=flips, faceness=np.round(faceness, 6).astype(np.float32)
    )
    got = json.loads((tmp_path / "out" / "IJBB.json").read_text())
    assert got["tar_at_far_insightface"][-1]["tar"] == pytest.approx(want.insightface[-1].tar)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "IJBB.npy"), want.scores, rtol=1e-5, atol=1e-6)
    r = CliRunner().invoke(
        app,
        [
            "eval-ijb",
            "--features",
            str(tmp_path / "f.npy"),
            "--meta",
            str(tmp_path / "IJBB"),
            "--target",
            "IJBB",
            "--flip",
            "none",
            "--out",
            str(tmp_path / "out2"),
        ],
    )
    assert r.exit_code == 0, r.output


def _benchmark_io():
    """benchmarks/io.py, loaded under another name (its own would shadow the standard library's io)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "io.py"
    spec = importlib.util.spec_from_file_location("benchmarks_io", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ratio", [0, 32, 10**9])  # always gather-and-dot, chosen per tile, always dense
@pytest.mark.parametrize("tile", [None, 64])
@pytest.mark.parametrize("layout", ["bipartite", "random"])
def test_pair_scores_every_path_matches_float64(monkeypatch, ratio, tile, layout):
    import facekd.evaluate.ijb as ijb

    monkeypatch.setattr(ijb, "DENSE_TILE_RATIO", ratio)
    rng = np.random.default_rng(5)
    n_t = 400
    feats = rng.normal(size=(n_t, 24))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    ids = np.sort(rng.choice(10**6, n_t, replace=False))
    if layout == "bipartite":  # 60 enrolment × 340 verification templates, as IJB pairs them
        a, b = rng.integers(0, 60, 5000), rng.integers(60, n_t, 5000)
    else:  # a dense corner plus pairs scattered over all templates, both orders
        corner = np.array(np.triu_indices(50)).T
        scattered = rng.integers(0, n_t, (3000, 2))
        a, b = np.concatenate([corner, scattered]).T
    got = pair_scores(ids, feats.astype(np.float32), ids[a], ids[b], tile=tile)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.einsum("ij,ij->i", feats[a], feats[b]), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_matches_the_float64_implementation_on_an_ijb_shaped_problem():
    """IJB-C's structure at 1/100 scale: the float32 pooling / tiled scoring / one-sort metrics give
    the previous float64 code's TARs and achieved FARs exactly, and its thresholds and AUC to float32
    rounding. The previous code is the baseline of benchmarks/io.py."""
    bench = _benchmark_io()
    sizes = {"n_images": 8000, "n_gallery": 120, "n_probe": 900, "n_pairs": 150_000, "n_genuine": 900}
    data = bench.synthetic_ijb(**sizes, dim=512)
    fars = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    res = evaluate_ijb(
        data["features"],
        data["templates"],
        data["medias"],
        data["p1"],
        data["p2"],
        data["labels"],
        features_flip=data["features_flip"],
        faceness=data["faceness"],
        fars=fars,
    )
    img = bench._baseline_image_features(data["features"], data["features_flip"], data["faceness"])
    ids, tf = bench._baseline_template_features(img, data["templates"], data["medias"])
    scores = bench._baseline_pair_scores(ids, tf, data["p1"], data["p2"])
    insightface, strict, roc = bench._baseline_metrics(scores, data["labels"], fars)
    np.testing.assert_allclose(res.scores, scores, rtol=0, atol=1e-6)
    assert res.auc == pytest.approx(roc.auc, abs=1e-9)
    for ours, theirs in ((res.insightface, insightface), (res.strict, strict)):
        assert [t.tar for t in ours] == [t[0] for t in theirs]
        assert [t.achieved_far for t in ours] == [t[2] for t in theirs]
        np.testing.assert_allclose([t.threshold for t in ours], [t[1] for t in theirs], rtol=0, atol=1e-6)
    assert 0.5 < res.insightface[0].tar < res.insightface[2].tar < 1  # operating points that matter
