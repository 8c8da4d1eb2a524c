"""PAD's per-sample variance made readable: statistics against direct loops, and `facekd
pad-variance RUN [DATA]` on a run trained from a config."""

from __future__ import annotations

import csv
import json
import math
import struct

import numpy as np
import pytest
import torch
import yaml

from facekd.losses.weighting.pad_stats import pad_statistics, teacher_margin


def _ranks(a):
    order = sorted(range(len(a)), key=lambda i: a[i])
    r = [0.0] * len(a)
    for pos, i in enumerate(order):
        r[i] = float(pos)
    return r


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_pad_statistics_match_direct_loops():
    g = np.random.default_rng(0)
    lv = g.normal(-3, 0.5, 40)
    gap = np.exp(lv) * g.uniform(0.5, 1.5, 40)
    groups = np.arange(40) % 3
    yaw = g.uniform(0, 1, 40)
    hard = yaw > 0.7
    st = pad_statistics(lv, gap, groups=groups, nuisance={"|yaw|": yaw}, flags={"hard": hard}, bins=4)
    mean = sum(lv) / 40
    assert st["log_sigma2_std"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in lv) / 40))
    assert st["spearman_sigma2_gap"] == pytest.approx(_pearson(_ranks(list(lv)), _ranks(list(gap))))
    for k in range(3):
        members = [math.exp(lv[i]) for i in range(40) if groups[i] == k]
        assert st["by_group"][str(k)] == pytest.approx(sum(members) / len(members))
    yb = st["by_nuisance"]["|yaw|"]
    assert len(yb["mean_sigma2"]) == 4 and yb["spearman"] == pytest.approx(
        _pearson(_ranks(list(lv)), _ranks(list(yaw)))
    )
    flagged = [math.exp(lv[i]) for i in range(40) if hard[i]]
    assert st["by_flag"]["hard"]["mean_sigma2_flagged"] == pytest.approx(sum(flagged) / len(flagged))
    with pytest.raises(ValueError, match="one length"):
        pad_statistics(lv, gap[:-1])


def test_teacher_margin_is_own_centre_minus_nearest_other():
    g = np.random.default_rng(1)
    emb = g.normal(size=(30, 5))
    labels = np.arange(30) % 4
    m = teacher_margin(emb, labels, chunk=7)
    t = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    centres = []
    for c in range(4):
        s = t[labels == c].sum(axis=0)
        centres.append(s / np.linalg.norm(s))
    for i in range(30):
        cos = [float(t[i] @ c) for c in centres]
        own = cos[labels[i]]
        other = max(v for c, v in enumerate(cos) if c != labels[i])
        assert m[i] == pytest.approx(own - other, abs=1e-5)
    assert teacher_margin(emb, np.zeros(30, int)) is None  # one class: no errors to speak of


def _write_idx(path, data: np.ndarray):
    header = bytes([0, 0, 0x08, data.ndim]) + b"".join(struct.pack(">I", d) for d in data.shape)
    path.write_bytes(header + data.astype(">u1").tobytes())


@pytest.fixture
def pad_run(tmp_path):
    """A finished classification run with PAD-L2 from a small_cnn teacher (trained from a config)."""
    from facekd.build import run_training
    from facekd.config import load_config
    from facekd.models import get_model

    torch.set_num_threads(1)
    g = np.random.default_rng(0)
    labels = (np.arange(48) % 4).astype(np.uint8)
    images = np.clip(g.integers(0, 256, (4, 12, 12))[labels] + g.integers(-40, 40, (48, 12, 12)), 0, 255)
    root = tmp_path / "data"
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte", images.astype(np.uint8))
    _write_idx(root / "train-labels-idx1-ubyte", labels)
    torch.manual_seed(123)
    torch.save(get_model("small_cnn", embedding_size=16).state_dict(), tmp_path / "teacher.pth")
    cfg = {
        "task": "classification",
        "data": {"kind": "idx", "path": str(root)},
        "model": {"arch": "small_cnn", "embedding_size": 16},
        "distill": {"loss": "l2", "weighting": "pad", "lambda": 2.0},
        "teacher": {"checkpoint": str(tmp_path / "teacher.pth"), "arch": "small_cnn", "embedding_size": 16},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "log_every": 1},
        "run_dir": str(tmp_path / "run"),
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_training(load_config(tmp_path / "run.yaml"), progress=False)
    return tmp_path / "run"


def test_logged_pad_loss_is_split_and_the_command_writes_per_sample_variance(pad_run, tmp_path, capsys):
    from facekd.cli import app

    rows = [json.loads(line) for line in (pad_run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["distill/loss"] == pytest.approx(r["distill/pad_weighted_gap"] + r["distill/pad_log_sigma2"], rel=1e-4)
        assert r["distill/pad_weight"] > 0
    with pytest.raises(SystemExit) as info:
        app(["pad-variance", str(pad_run), "--out", str(tmp_path / "pv")], prog_name="facekd")
    out = capsys.readouterr()
    assert info.value.code == 0, out.err[-2000:]
    summary = json.loads((tmp_path / "pv" / "summary.json").read_text())
    assert summary["n"] == 48 and summary["log_sigma2_std"] >= 0 and "teacher" in summary
    with open(tmp_path / "pv" / "per_sample.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 48 and set(table[0]) == {"row", "label", "gap", "sigma2", "log_sigma2", "effective_weight"}
    sigma2 = np.array([float(r["sigma2"]) for r in table])
    assert np.allclose(np.log(sigma2), [float(r["log_sigma2"]) for r in table], atol=1e-4)
    assert np.mean([float(r["effective_weight"]) for r in table]) == pytest.approx(
        summary["mean_effective_weight"], rel=1e-3
    )
    assert "log_sigma2_std" in out.out


@pytest.mark.slow
def test_pad_variance_refuses_a_run_without_pad_and_a_missing_run(pad_run, tmp_path, capsys):
    from facekd.cli import app

    with pytest.raises(SystemExit) as info:
        app(["pad-variance", str(tmp_path / "nowhere")], prog_name="facekd")
    assert info.value.code == 2 and "not a facekd run directory" in capsys.readouterr().err
    cfg = yaml.safe_load((pad_run / "config.yaml").read_text())
    cfg["distill"]["weighting"] = "uniform"
    cfg["run_dir"] = str(tmp_path / "uniform_run")
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(cfg))
    from facekd.build import run_training
    from facekd.config import load_config

    run_training(load_config(tmp_path / "u.yaml"), progress=False)
    with pytest.raises(SystemExit) as info:
        app(["pad-variance", str(tmp_path / "uniform_run")], prog_name="facekd")
    assert info.value.code == 2 and "weighting: pad" in capsys.readouterr().err
