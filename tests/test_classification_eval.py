"""Classification and retrieval evaluation of students, against direct slow implementations."""

import json

import numpy as np
import pytest
import torch
from conftest import TinyFaces, TinyNet

from facekd.evaluate.classification import classification_accuracy
from facekd.evaluate.model_eval import evaluate_classifier, evaluate_retrieval, predict_dataset
from facekd.evaluate.reid import recall_at_k


def slow_topk(logits, labels, k):
    """Per sample: classes sorted by (-logit, class id); correct if the label is among the first k."""
    hits = 0
    for z, y in zip(logits.tolist(), labels.tolist()):
        order = sorted(range(len(z)), key=lambda c: (-z[c], c))
        hits += y in order[:k]
    return hits / len(labels)


def test_topk_and_per_class_match_slow_with_ties():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, (300, 7)).astype(np.float32)  # integer logits: many ties
    labels = rng.integers(0, 6, 300)  # class 6 never occurs
    res = classification_accuracy(logits, labels, ks=(1, 2, 5), chunk=64)
    for k in (1, 2, 5):
        assert res.topk[k] == pytest.approx(slow_topk(logits, labels, k), abs=0)
    pred = logits.argmax(1)  # top-1 with ties to the lower class id is argmax
    assert res.topk[1] == pytest.approx(np.mean(pred == labels), abs=0)
    for c in range(6):
        assert res.per_class[c] == pytest.approx(np.mean(pred[labels == c] == c), abs=0)
        assert res.counts[c] == np.sum(labels == c)
    assert np.isnan(res.per_class[6]) and res.counts[6] == 0
    assert res.mean_per_class == pytest.approx(np.mean([np.mean(pred[labels == c] == c) for c in range(6)]))
    d = res.to_dict()
    json.dumps(d)
    assert d["per_class"][6] is None and d["n"] == 300 and d["top5"] == res.topk[5]
    assert d["worst_class_accuracy"] == pytest.approx(np.nanmin(res.per_class))


def test_classification_errors():
    z = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"1 <= k <= 3"):
        classification_accuracy(z, [0, 1, 2, 0], ks=(1, 5))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_accuracy(z, [0, 1, 3, 0])
    with pytest.raises(ValueError, match="integers"):
        classification_accuracy(z, [0.5, 1, 2, 0])
    with pytest.raises(ValueError, match="NaN"):
        classification_accuracy(np.array([[0, np.nan, 1.0]] * 4), [0, 1, 2, 0], ks=(1,))
    assert classification_accuracy(z, [0, 1, 2, 0], ks=(1,), num_classes=5).per_class.shape == (5,)


def test_evaluate_classifier_and_retrieval_on_a_dataset():
    torch.manual_seed(0)
    data = TinyFaces(n=40, num_classes=4)
    model, head = TinyNet(dim=6, bn=True), torch.nn.Linear(6, 4)
    model.train()
    res = evaluate_classifier(model, head, data, ks=(1, 3), batch_size=7)
    assert model.training and head.training  # modes restored
    with torch.no_grad():
        model.eval()
        x = torch.stack([data[i]["image"] for i in range(len(data))])
        emb = model(x)
        logits = head(emb).numpy()
    want = classification_accuracy(logits, data.labels, ks=(1, 3))
    assert res.topk == want.topk
    np.testing.assert_array_equal(res.per_class, want.per_class)
    feats, labels = predict_dataset(model, data, batch_size=16)
    np.testing.assert_allclose(feats, emb.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, data.labels)
    assert evaluate_retrieval(model, data, ks=(1, 4), batch_size=9) == recall_at_k(emb.numpy(), data.labels, (1, 4))


def test_eval_retrieval_command(tmp_path):
    import typer
    from typer.testing import CliRunner

    from facekd.evaluate.commands import register

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 50)
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "embeddings.npy", emb)
    np.save(cache / "labels.npy", labels)
    (cache / "meta.json").write_text(json.dumps({"complete": True, "n": 50, "embedding_size": 8}))
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["eval-retrieval", str(cache), "--ks", "1,4", "--out", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    want = recall_at_k(emb, labels, (1, 4))
    assert f"R@1 {100 * want[1]:.2f}" in r.output
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["recall@4"] == pytest.approx(want[4]) and got["n"] == 50
    r = CliRunner().invoke(app, ["eval-retrieval", str(cache), "--ks", "1,x"])
    assert r.exit_code == 2 and "comma-separated integers" in r.output
