"""The `facekd` command: clean one-line errors with exit code 2, train / embed / eval end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from facekd.cli import COMMAND_MODULES, app

ROOT = Path(__file__).resolve().parent.parent


def _invoke(args, capsys):
    with pytest.raises(SystemExit) as info:
        app(args, prog_name="facekd")
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _arrays(tmp_path, n=32, classes=4, size=16):
    g = np.random.default_rng(0)
    labels = np.arange(n) % classes
    images = g.integers(0, 255, size=(n, size, size, 3)).astype(np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    return tmp_path / "data.npz"


def test_config_errors_are_one_clean_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"lrr": 1}}))
    code, _, err = _invoke(["train", str(cfg)], capsys)
    assert code == 2 and err.strip() == f"error: {cfg}: train.lrr: unknown key"
    code, _, err = _invoke(["train", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml does not exist" in err and "Traceback" not in err
    cfg.write_text("{}\n")
    code, _, err = _invoke(["train", str(cfg), "train.lr=abc"], capsys)
    assert code == 2 and err.count("\n") == 1 and "train.lr" in err


def test_usage_errors_exit_2(capsys):
    code, _, err = _invoke(["demo", "--quick", "--full"], capsys)
    assert code == 2 and "exclude each other" in err
    code, _, _ = _invoke(["no-such-command"], capsys)
    assert code == 2


def test_train_embed_eval_commands(tmp_path, capsys):
    data = _arrays(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"kind": "arrays", "path": str(data)},
                "model": {"arch": "iresnet_mini", "embedding_size": 8},
                "train": {"epochs": 1, "batch_size": 16},
                "run_dir": str(tmp_path / "run"),
            }
        )
    )
    code, out, err = _invoke(["train", str(cfg), "train.lr=0.01", "--no-progress"], capsys)
    assert code == 0, err
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 0.01 and resolved["train"]["momentum"] == 0.9
    ckpt = tmp_path / "run" / "backbone.pth"
    code, out, err = _invoke(
        [
            "embed",
            "--arch",
            "iresnet_mini",
            "--embedding-size",
            "8",
            "--checkpoint",
            str(ckpt),
            "--kind",
            "arrays",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "cache"),
            "--flip",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert "32 × 8" in out and (tmp_path / "cache" / "meta.json").exists()
    code, out, err = _invoke(
        ["eval", "--arch", "iresnet_mini", "--embedding-size", "8", "--preset", "quick", "--out", str(tmp_path / "ev")],
        capsys,
    )
    assert code == 0, err
    assert "TAR strict" in out and "1e-04" in out and "accuracy (10-fold)" in out
    assert (tmp_path / "ev" / "roc.png").exists()


def test_command_modules_register_without_error():
    import importlib

    for name in COMMAND_MODULES:
        assert callable(importlib.import_module(name).register)


def test_console_entry_point_runs(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "facekd.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert res.returncode == 0 and "demo" in res.stdout and "train" in res.stdout
