"""docs/fashion-mnist.md, run as written (configs/fashion-mnist/*.yaml and `facekd` commands only)
on a small Fashion-MNIST written here byte by byte in the IDX format; only the data path, the
epochs and the batch size are overridden."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from facekd.cli import app

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "fashion-mnist"
RUNS = Path("runs/fashion-mnist")


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: 0x00 0x00, type 0x08 (unsigned byte), number of dimensions, big-endian int32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fashion(root: Path) -> Path:
    """10 classes of 28×28 grey images (a class-specific pattern plus noise): 60 train, 20 test."""
    g = np.random.default_rng(0)
    patterns = g.integers(0, 255, size=(10, 28, 28))
    root.mkdir()
    for prefix, n in (("train", 60), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = np.clip(patterns[labels] + g.integers(-40, 40, size=(n, 28, 28)), 0, 255)
        _write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def _facekd(args, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        app([str(a) for a in args], prog_name="facekd")
    out = capsys.readouterr()
    assert info.value.code == 0, out.err
    return out.out


def _train(name: str, data: Path, capsys, *overrides: str) -> str:
    small = [f"data.path={data}", "train.epochs=1", "train.batch_size=9", "train.warmup_epochs=0"]
    return _facekd(["train", CONFIGS / f"{name}.yaml", *small, *overrides, "--no-progress"], capsys)


def test_the_configs_are_the_walkthroughs():
    """Every config trains on the same split and names its own run directory."""
    raw = {p.stem: yaml.safe_load(p.read_text()) for p in CONFIGS.glob("*.yaml")}
    assert set(raw) == {"teacher", "scratch", "l2", "pad", "hkd", "kd_is"}
    assert {json.dumps(r["data"], sort_keys=True) for r in raw.values()} == {
        json.dumps(raw["teacher"]["data"], sort_keys=True)
    }
    assert raw["teacher"]["data"]["val_fraction"] == 0.1
    assert all(r["run_dir"] == f"runs/fashion-mnist/{name}" for name, r in raw.items())
    doc = (ROOT / "docs" / "fashion-mnist.md").read_text()
    for name in raw:
        assert f"configs/fashion-mnist/{name}.yaml" in doc or f"$F/{name}.yaml" in doc


@pytest.mark.slow
def test_walkthrough_on_a_small_fashion_mnist(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    data = _fashion(tmp_path / "fashion")
    monkeypatch.chdir(tmp_path)
    out = _train("teacher", data, capsys)
    assert re.search(r"^val val: top1 [\d.]+  top5 [\d.]+  mean per-class", out, re.M), out
    _facekd(["eval", "--checkpoint", RUNS / "teacher", "--split", "val"], capsys)
    embed = ["embed", "--arch", "small_cnn", "--checkpoint", RUNS / "teacher", "--kind", "idx", "--data", data]
    out = _facekd([*embed, "--split", "train", "--val-fraction", "0.1", "--out", RUNS / "teacher_cache"], capsys)
    assert "54 × 128" in out
    for name in ("scratch", "l2", "pad", "hkd", "kd_is"):
        _train(name, data, capsys)
    # λ is chosen on split val: one more λ for L2, compared on the held-out rows only
    _train("l2", data, capsys, "distill.lambda=1", f"run_dir={RUNS / 'l2-lam1'}")
    for run in ("l2", "l2-lam1"):
        out = _facekd(["eval", "--checkpoint", RUNS / run, "--split", "val", "--out", RUNS / run / "val"], capsys)
        assert json.loads((RUNS / run / "val" / "eval.json").read_text())["n"] == 6
    # a second seed, then every student on the test split
    _train("scratch", data, capsys, "train.seed=1", f"run_dir={RUNS / 'scratch-s1'}")
    for run in ("scratch", "scratch-s1", "l2", "pad", "hkd", "kd_is"):
        out = _facekd(["eval", "--checkpoint", RUNS / run, "--split", "test", "--out", RUNS / run / "test"], capsys)
        res = json.loads((RUNS / run / "test" / "eval.json").read_text())
        assert res["n"] == 20 and 0 <= res["top1"] <= res["top5"] <= 1 and len(res["per_class"]) == 10
    # the draws of Intrinsic Sampling are in the run directory and can be scored
    draws = np.load(RUNS / "kd_is" / "samples" / "epoch_000.npy")
    assert draws.shape == (54,) and draws.min() >= 0 and draws.max() < 54
    out = _facekd(
        ["uniformity", RUNS / "teacher_cache", "--list", RUNS / "kd_is" / "samples" / "epoch_000.npy"], capsys
    )
    assert "uniformity of list" in out
