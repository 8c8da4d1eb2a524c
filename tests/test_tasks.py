"""Training tasks (facekd.tasks) and `task:` configs: face, classification and metric-learning students."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TinyNet
from torch import nn

from facekd.build import run_training
from facekd.config import ConfigError, load_config
from facekd.losses.metric import CenterLoss
from facekd.models.reid_nets import ReIDNet
from facekd.tasks import ClassificationTask, FaceTask, MetricTask


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _write_cfg(tmp_path, cfg: dict):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _save_teacher(path, arch: str, **kw):
    from facekd.models import get_model

    torch.manual_seed(123)
    torch.save(get_model(arch, **kw).state_dict(), path)
    return path


# ----------------------------------------------------------------------------- MetricTask unit tests
class _TinyTrunk(nn.Module):
    out_channels = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return x, [x]


def _ls_ce_loop(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    """(1−ε)·(−log p_y) + ε·mean_c(−log p_c), averaged over the batch, in float64."""
    total = 0.0
    for z, y in zip(logits.detach().double(), labels):
        logp = z - torch.logsumexp(z, 0)
        total += float((1 - eps) * -logp[y] + eps * -logp.mean())
    return total / len(labels)


def _triplet_loop(f: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    f = f.double()
    out = []
    for i in range(len(f)):
        d = [(f[i] - f[j]).norm().item() for j in range(len(f))]
        ap = max(d[j] for j in range(len(f)) if j != i and labels[j] == labels[i])
        an = min(d[j] for j in range(len(f)) if labels[j] != labels[i])
        out.append(max(0.0, ap - an + margin))
    return sum(out) / len(out)


@pytest.mark.parametrize("neck_feat", ["after", "before"])
def test_metric_task_bnneck_triplet_before_softmax_after(neck_feat):
    from facekd.models.heads import get_head

    torch.manual_seed(0)
    student = ReIDNet(_TinyTrunk(), neck_feat=neck_feat)
    head = get_head("softmax", 6, 3)
    task = MetricTask(student, head=head, label_smoothing=0.1, triplet_margin=0.3)
    x, labels = torch.randn(6, 3, 8, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    loss, logs = task({"image": x, "label": labels, "index": torch.arange(6)}, 0)
    before = torch.relu(student.base.conv(x)).mean(dim=(2, 3))  # pooled feature, the BNNeck's input
    after = F.batch_norm(before, None, None, student.bottleneck.weight, student.bottleneck.bias, training=True)
    assert logs["triplet"] == pytest.approx(_triplet_loop(before, labels, 0.3), rel=1e-5)
    assert logs["cls"] == pytest.approx(_ls_ce_loop(head(after, labels), labels, 0.1), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(logs["cls"] + logs["triplet"]), rel=1e-5)
    # without the BNNeck both losses read the student's output
    plain = MetricTask(student, head=head, bnneck=False, label_smoothing=0.0)
    out = student(x)
    _, logs2 = plain({"image": x, "label": labels, "index": torch.arange(6)}, 0)
    assert logs2["triplet"] == pytest.approx(_triplet_loop(out, labels, 0.3), rel=1e-5)


def test_metric_task_center_loss_weights_features_not_centres():
    torch.manual_seed(0)
    net, w = TinyNet(dim=4), 0.01
    center = CenterLoss(3, 4)
    task = MetricTask(net, triplet_weight=0.0, center=center, center_weight=w)
    x, labels = torch.randn(5, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    loss, logs = task({"image": x, "label": labels, "index": torch.arange(5)}, 0)
    loss.backward()
    # direct float64 reference: c = mean_i ||f_i − c_{y_i}||²
    f = net(x).detach().double().requires_grad_(True)
    cen = center.centers.detach().double().requires_grad_(True)
    ref = sum(((f[i] - cen[labels[i]]) ** 2).sum() for i in range(5)) / 5
    ref.backward()
    assert float(loss.detach()) == pytest.approx(w * float(ref.detach()), rel=1e-5)
    assert logs["center"] == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(center.centers.grad.double(), cen.grad, rtol=1e-4, atol=1e-6)  # unweighted
    expect_fc = torch.autograd.grad(net(x), net.fc.weight, grad_outputs=(w * f.grad).float())[0]
    torch.testing.assert_close(net.fc.weight.grad, expect_fc, rtol=1e-4, atol=1e-7)  # weighted by w


def test_task_argument_errors():
    with pytest.raises(ValueError, match="needs a head, a triplet"):
        MetricTask(TinyNet(), triplet_weight=0.0)
    with pytest.raises(ValueError, match="needs a teacher"):
        MetricTask(TinyNet(), distiller=nn.Identity())
    with pytest.raises(ValueError, match="needs a teacher"):
        ClassificationTask(TinyNet(), nn.Linear(6, 2), distiller=nn.Identity())
    with pytest.raises(ValueError, match="needs a head, a distiller"):
        FaceTask(TinyNet())


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "cfg,pattern",
    [
        ({"task": "face", "sampler": {"name": "pk"}}, r"sampler pk is for task metric"),
        (
            {"task": "metric", "sampler": {"name": "pk", "options": {"p": 2, "k": 4}}, "train": {"batch_size": 6}},
            r"batch_size must be p·k = 8",
        ),
        ({"task": "metric", "sampler": {"name": "pk", "options": {"q": 2}}}, r"unknown options \['q'\]"),
        ({"task": "classification", "head": {"name": "arcface"}}, r"classification needs head \{name: softmax\}"),
        ({"task": "face", "metric": {"triplet_margin": 0.3}}, r"metric block applies only to task metric"),
        ({"data": {"kind": "arrays", "path": ".", "image_size": [8, 4]}}, r"kind arrays does not use image_size"),
        ({"data": {"kind": "idx", "path": ".", "split": "query"}}, r"kind idx has split train / test"),
    ],
)
def test_task_config_errors(tmp_path, cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(_write_cfg(tmp_path, cfg))


def test_metric_config_defaults_to_softmax_head(tmp_path):
    cfg = load_config(_write_cfg(tmp_path, {"task": "metric", "train": {"batch_size": 64}, "sampler": {"name": "pk"}}))
    assert cfg.head.name == "softmax" and cfg.sampler.options == {"p": 16, "k": 4}
    assert load_config(None).head.name == "arcface"


def _write_idx(path, data: np.ndarray, type_code: int = 0x08):
    """IDX file byte by byte: 0x0000, type code, ndim, big-endian uint32 dims, then the data."""
    header = bytes([0, 0, type_code, data.ndim]) + b"".join(struct.pack(">I", d) for d in data.shape)
    path.write_bytes(header + data.astype(">u1").tobytes())


def test_classification_student_from_config_with_pad(tmp_path):
    g = np.random.default_rng(0)
    labels = (np.arange(32) % 4).astype(np.uint8)
    templates = g.integers(0, 256, (4, 12, 12))
    images = np.clip(templates[labels] + g.integers(-30, 30, (32, 12, 12)), 0, 255).astype(np.uint8)
    root = tmp_path / "fmnist"
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte", images)
    _write_idx(root / "train-labels-idx1-ubyte", labels)
    teacher = _save_teacher(tmp_path / "teacher.pth", "small_cnn", embedding_size=16)
    cfg = load_config(
        _write_cfg(
            tmp_path,
            {
                "task": "classification",
                "data": {"kind": "idx", "path": str(root)},
                "model": {"arch": "small_cnn", "embedding_size": 8},
                "distill": {"loss": "l2", "weighting": "pad", "lambda": 1.0},
                "teacher": {"checkpoint": str(teacher), "arch": "small_cnn", "embedding_size": 16},
                "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "log_every": 1},
                "run_dir": str(tmp_path / "run"),
            },
        )
    )
    task = run_training(cfg, progress=False)
    assert isinstance(task, ClassificationTask) and task.distiller.is_pad
    assert task.distiller.projection.out_features == 16  # student 8-d → teacher 16-d
    rows = _metrics(tmp_path / "run")
    assert len(rows) == 2 * 32 // 8
    assert {"cls", "acc", "distill"} <= set(rows[-1]) and all(np.isfinite(r["loss"]) for r in rows)
    from facekd.models.checkpoint import load_backbone

    student = load_backbone(tmp_path / "run" / "backbone.pth", "small_cnn")
    assert student.embedding_size == 8


def _write_market(root, n_ids=4, size=(32, 16), seed=0):
    """Market-1501-style folders: per-id colour + noise, train on cams 1-2, query cam 1, gallery cam 2
    (+ a distractor)."""
    from PIL import Image

    g = np.random.default_rng(seed)
    colours = g.integers(0, 256, (n_ids + 1, 1, 1, 3))
    layout = {
        "bounding_box_train": [(pid, cam, k) for pid in range(1, n_ids + 1) for cam in (1, 2) for k in range(2)],
        "query": [(pid, 1, 0) for pid in range(1, n_ids + 1)],
        "bounding_box_test": [(pid, 2, k) for pid in range(1, n_ids + 1) for k in range(2)] + [(0, 3, 0), (-1, 3, 0)],
    }
    for split, items in layout.items():
        (root / split).mkdir(parents=True)
        for pid, cam, k in items:
            img = np.clip(colours[pid] + g.integers(-25, 25, (*size, 3)), 0, 255).astype(np.uint8)
            name = f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg" if pid >= 0 else f"-1_c{cam}s1_{k:06d}_00.jpg"
            Image.fromarray(img).save(root / split / name, quality=95)


@pytest.mark.slow
def test_metric_student_on_reid_folders_with_pk_and_pad(tmp_path):
    from facekd.build import build_dataset
    from facekd.data.pk_sampler import PKSampler
    from facekd.embed import embed_dataset
    from facekd.evaluate.reid import evaluate_reid_features

    root = tmp_path / "Market-1501-v15.09.15"
    _write_market(root)
    teacher = _save_teacher(tmp_path / "teacher.pth", "shufflenet_v2_x0_5", embedding_size=32)
    raw = {
        "task": "metric",
        "metric": {"triplet_margin": 0.3, "center_weight": 5e-4},
        "data": {"kind": "market1501", "path": str(tmp_path), "image_size": [32, 16]},
        "model": {"arch": "shufflenet_v2_x0_5", "embedding_size": 16},
        "distill": {"loss": "l2", "weighting": "pad", "lambda": 1.0},
        "teacher": {"checkpoint": str(teacher), "arch": "shufflenet_v2_x0_5", "embedding_size": 32},
        "sampler": {"name": "pk", "options": {"p": 2, "k": 4}},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.02, "log_every": 1, "warmup_epochs": 0},
        "run_dir": str(tmp_path / "run"),
    }
    cfg = load_config(_write_cfg(tmp_path, raw))
    task = run_training(cfg, progress=False)
    assert isinstance(task, MetricTask) and task.center is not None and task.distiller.is_pad
    rows = _metrics(tmp_path / "run")
    assert len(rows) == 3 * 2  # 16 images = 4 ids × 4 → 2 PK batches of 2 × 4 per epoch
    assert {"cls", "acc", "triplet", "center", "distill"} <= set(rows[0])
    assert all(np.isfinite(r["loss"]) for r in rows)
    train_set = build_dataset(cfg.data)
    for batch in PKSampler(train_set.labels, 2, 4).batches():  # each batch: 2 ids × 4 images
        assert sorted(np.bincount(train_set.labels[batch])[np.unique(train_set.labels[batch])]) == [4, 4]

    feats = {}
    for split in ("query", "gallery"):
        ds = build_dataset(cfg.data.model_copy(update={"split": split}))
        cache = embed_dataset(task.student, ds, tmp_path / f"emb_{split}", batch_size=8)
        feats[split] = (np.asarray(cache.embeddings), ds.pids, ds.camids)
    assert len(feats["gallery"][1]) == 9  # the junk (-1) image is dropped, the distractor (0) kept
    res = evaluate_reid_features(
        feats["query"][0],
        feats["gallery"][0],
        feats["query"][1],
        feats["gallery"][1],
        feats["query"][2],
        feats["gallery"][2],
    )
    assert res.num_valid_queries == 4 and 0.0 <= res.mAP <= 1.0 and res.cmc[-1] == 1.0
    assert rows[-1]["loss"] < rows[0]["loss"]  # the optimisation makes progress (6 steps: no accuracy claim)


def test_face_student_with_intrinsic_sampling_from_config(tmp_path):
    g = np.random.default_rng(0)
    labels = np.arange(48) % 4
    templates = g.integers(0, 256, (4, 16, 16, 3))
    images = np.clip(templates[labels] + g.integers(-20, 20, (48, 16, 16, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    teacher = _save_teacher(tmp_path / "teacher.pth", "small_cnn", embedding_size=16)
    cfg = load_config(
        _write_cfg(
            tmp_path,
            {
                "data": {"kind": "arrays", "path": str(tmp_path / "data.npz")},
                "model": {"arch": "small_cnn", "embedding_size": 8},
                "head": {"name": "arcface", "s": 16},
                "distill": {"loss": "l2", "lambda": 1.0},
                "teacher": {"checkpoint": str(teacher), "arch": "small_cnn", "embedding_size": 16},
                "sampler": {"name": "intrinsic", "options": {"bandwidth": "30deg", "num": 40}},
                "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "log_every": 1},
                "run_dir": str(tmp_path / "run"),
            },
        )
    )
    task = run_training(cfg, progress=False)
    assert isinstance(task, FaceTask)
    rows = _metrics(tmp_path / "run")
    assert len(rows) == 2 * 40 // 8  # the sampler's 40 draws per epoch, not the 48 images
    assert {"cls", "distill"} <= set(rows[-1])
