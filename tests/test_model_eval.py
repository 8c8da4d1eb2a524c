"""facekd.evaluate.model_eval (a model over .bin / IJB sets) and load_backbone into a built module."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from facekd.data.ijb import IJBDataset, arcface_template
from facekd.evaluate.model_eval import embed_ijb, embed_raw_flip, evaluate_bin, model_image_size
from facekd.models import get_model
from facekd.models.checkpoint import load_backbone

torch.set_num_threads(1)
SIZE = 12


class Net(nn.Module):
    """conv → ReLU → flatten → linear, with an `input_size` attribute like the facekd models."""

    def __init__(self, size=SIZE, dim=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.input_size = (size, size)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * size * size, dim)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")  # lossless, so the direct path sees the same pixels
    return buf.getvalue()


def _direct_accuracy_flip(model, images, issame, nfolds=10):
    """insightface's eval/verification.py by hand: per-image loops, float64 distances, thresholds loop."""
    raw = []
    with torch.no_grad():
        for img in images:
            x = torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
            raw.append((model(x)[0].double().numpy(), model(torch.flip(x, dims=[3]))[0].double().numpy()))
    xnorm = np.mean([np.linalg.norm(v) for pair in raw for v in pair])
    emb = [(o + f) / np.linalg.norm(o + f) for o, f in raw]
    dist = np.array([np.sum((emb[2 * i] - emb[2 * i + 1]) ** 2) for i in range(len(issame))])
    thresholds = np.arange(0, 4, 0.01)
    n = len(issame)
    folds = np.array_split(np.arange(n), nfolds)  # KFold(shuffle=False): first n % k folds one larger

    def acc(idx, t):
        return np.mean([(dist[i] < t) == issame[i] for i in idx])

    accs = []
    for k in range(nfolds):
        train = np.concatenate([folds[j] for j in range(nfolds) if j != k])
        best = max(range(len(thresholds)), key=lambda j: (acc(train, thresholds[j]), -j))
        accs.append(acc(folds[k], thresholds[best]))
    return np.mean(accs), np.std(accs), xnorm


def test_evaluate_bin_matches_direct_protocol(tmp_path):
    rng = np.random.default_rng(0)
    n = 23  # not a multiple of 10: uneven folds
    issame = rng.random(n) < 0.5
    images = []
    for i in range(n):
        a = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        b = a + rng.normal(0, 60, a.shape) if issame[i] else rng.integers(0, 256, a.shape)
        b = np.clip(b, 0, 255).astype(np.uint8)
        images += [a, b]
    path = tmp_path / "toy.bin"
    # the file insightface's build_eval_pack writes: pickle of (list of encoded images, list of bools)
    path.write_bytes(pickle.dumps(([_png(im) for im in images], [bool(v) for v in issame]), protocol=2))
    model = Net().eval()
    res = evaluate_bin(model, path, batch_size=5)
    mean, std, xnorm = _direct_accuracy_flip(model, images, issame)
    assert res["name"] == "toy" and res["n_pairs"] == n
    assert res["accuracy_flip"] == pytest.approx(mean, abs=1e-12) and res["std"] == pytest.approx(std, abs=1e-12)
    assert res["xnorm"] == pytest.approx(xnorm, rel=1e-5)
    assert 0.5 < res["accuracy_flip"] <= 1.0


def test_evaluate_bin_resizes_to_the_model_input(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 20, 20, 3), dtype=np.uint8)
    path = tmp_path / "big.bin"
    path.write_bytes(pickle.dumps(([_png(im) for im in images], [True, False] * 5), protocol=4))
    model = Net(size=SIZE)
    model.train()
    res = evaluate_bin(model, path)
    assert res["n_pairs"] == 10 and model.training  # mode restored


def test_embed_raw_flip_checks_input():
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\)"):
        embed_raw_flip(Net(), np.zeros((2, SIZE, SIZE), np.uint8))
    m = nn.Linear(2, 2)
    assert model_image_size(m) == 112 and model_image_size(Net()) == SIZE
    m.input_size = (16, 8)
    with pytest.raises(ValueError, match="not square"):
        model_image_size(m)


def _ijb_release(root, n=7, side=20):
    """A tiny IJB-C-style release written line by line: loose crops, landmarks at the ArcFace template
    mapped by a shift (so alignment is a pure translation), template/media ids, pairs."""
    rng = np.random.default_rng(0)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    tmpl = arcface_template(SIZE)
    tid_mid, pts = [], []
    for i in range(n):
        name = f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / "loose_crop" / name)
        lm = tmpl + rng.uniform(0, side - SIZE, 2)
        tid_mid.append(f"{name} {i // 2 + 1} {i + 1}\n")
        pts.append(f"{name} " + " ".join(f"{v:.3f}" for v in lm.ravel()) + " 0.9\n")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("".join(tid_mid))
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("".join(pts))
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("1 2 0\n2 3 1\n1 4 0\n")


def test_embed_ijb_rows_in_meta_order_with_flip(tmp_path):
    _ijb_release(tmp_path / "IJBC")
    model = Net()
    feats, feats_flip = embed_ijb(model, tmp_path / "IJBC", "IJBC", batch_size=3)
    ds = IJBDataset(tmp_path / "IJBC", "IJBC", image_size=SIZE)
    assert feats.shape == feats_flip.shape == (7, 6) and feats.dtype == np.float32
    with torch.no_grad():
        for i in range(len(ds)):
            x = ds[i]["image"][None]
            np.testing.assert_allclose(feats[i], model(x)[0].numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(feats_flip[i], model(torch.flip(x, dims=[3]))[0].numpy(), rtol=1e-5, atol=1e-6)


def test_load_backbone_into_a_built_module(tmp_path):
    src = get_model("iresnet_mini", embedding_size=8, input_size=16)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "backbone.pth")
    dst = get_model("iresnet_mini", embedding_size=8, input_size=16).train()
    out = load_backbone(tmp_path, dst)  # a run dir works too
    assert out is dst and not out.training
    for k, v in src.state_dict().items():
        assert torch.equal(v, out.state_dict()[k]), k
    with pytest.raises(ValueError, match="apply only when arch is a name"):
        load_backbone(tmp_path, dst, embedding_size=8)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_backbone(tmp_path, get_model("iresnet_mini", embedding_size=4, input_size=16))
    torch.save({**src.state_dict(), "extra.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="1 unexpected"):
        load_backbone(tmp_path / "extra.pth", dst)
    with pytest.warns(UserWarning, match="non-strictly"):
        load_backbone(tmp_path / "extra.pth", dst, strict=False)
