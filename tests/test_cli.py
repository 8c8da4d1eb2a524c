"""The `facekd` command: clean one-line errors with exit code 2, train / embed / eval end to end."""

from __future__ import annotations

import errno
import os
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _train_config(tmp_path, data, epochs=1, **train):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"kind": "arrays", "path": str(data)},
                "model": {"arch": "iresnet_mini", "embedding_size": 8},
                "train": {"epochs": epochs, "batch_size": 16, "log_every": 1, **train},
                "run_dir": str(tmp_path / "run"),
            }
        )
    )
    return cfg


@pytest.mark.slow
def test_a_refused_train_leaves_config_yaml_untouched(tmp_path, capsys):
    cfg = _train_config(tmp_path, _arrays(tmp_path))
    code, _, err = _invoke(["train", str(cfg), "--no-progress"], capsys)
    assert code == 0, err
    saved = tmp_path / "run" / "config.yaml"
    before = saved.read_bytes()
    code, out, err = _invoke(["train", str(cfg), "train.lr=0.2", "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and "lr" in err and "done" not in out
    assert saved.read_bytes() == before, "the finished run's config.yaml must not be rewritten by a refused run"


@pytest.mark.slow
def test_two_train_processes_on_one_run_directory(tmp_path, capsys):
    import time

    cfg = _train_config(tmp_path, _arrays(tmp_path), epochs=3000)
    first = subprocess.Popen(
        [sys.executable, "-m", "facekd.cli", "train", str(cfg), "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 180
        while first.poll() is None and time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
            time.sleep(0.1)
        assert first.poll() is None, f"the first run ended early: {first.stderr.read()[-2000:]}"
        code, out, err = _invoke(["train", str(cfg), "--no-progress"], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert f"process {first.pid}" in err and str(tmp_path / "run") in err
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_two_embeds_into_one_out_directory(tmp_path, capsys):
    import torch
    from test_store import hold_lock, release

    from facekd.models import get_model

    data, out, ckpt = _arrays(tmp_path), tmp_path / "cache", tmp_path / "backbone.pth"
    torch.save(get_model("iresnet_mini", embedding_size=8, input_size=16).state_dict(), ckpt)
    holder = hold_lock(out)
    try:
        args = ["embed", "--arch", "iresnet_mini", "--checkpoint", str(ckpt), "--kind", "arrays", "--data", str(data)]
        code, _, err = _invoke([*args, "--out", str(out), "--no-progress"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"process {holder.pid}" in err and str(out) in err
        assert not (out / "meta.json").exists() and not list(out.glob(".part*"))
    finally:
        release(holder)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as its format says: 0x00 0x00, type 0x08 (uint8), ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_embed_split_is_honoured_for_every_kind(tmp_path, capsys):
    g = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte", g.integers(0, 255, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    args = ["embed", "--arch", "small_cnn", "--kind", "idx", "--data", str(root), "--no-progress"]
    code, out, err = _invoke([*args, "--split", "test", "--out", str(tmp_path / "test")], capsys)
    assert code == 0, err
    assert "5 × " in out, "--split test must embed the test split"
    code, out, err = _invoke([*args, "--out", str(tmp_path / "train")], capsys)
    assert code == 0 and "12 × " in out, err
    args = ["embed", "--arch", "iresnet_mini", "--kind", "arrays", "--data", str(_arrays(tmp_path))]
    code, _, err = _invoke([*args, "--split", "test", "--out", str(tmp_path / "x")], capsys)
    assert (
        code == 2
        and err.count("\n") == 1
        and "kind arrays has split train (and val with val_fraction), not test" in err
    )


# --------------------------------------------------------------------------------------------
# the error boundary


def _boundary_app(error: BaseException):
    """A facekd app with one command raising `error`."""
    from facekd.cli import _App

    small = _App(add_completion=False, pretty_exceptions_enable=False)

    @small.command()
    def fail() -> None:
        raise error

    @small.command()
    def other() -> None:  # two commands, so `fail` is addressed by name as in facekd
        pass

    return small


def _run_boundary(error: BaseException, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        _boundary_app(error)(["fail"], prog_name="facekd")
    return int(info.value.code or 0), capsys.readouterr().err


def test_an_unexpected_exception_is_a_bug_with_its_traceback(capsys, monkeypatch):
    monkeypatch.delenv("FACEKD_DEBUG", raising=False)
    code, err = _run_boundary(KeyError("state"), capsys)
    lines = err.splitlines()
    assert code == 1
    assert lines[0].startswith("facekd: internal error (KeyError)") and "bug" in lines[0] and "report" in lines[0]
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "KeyError: 'state'"


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("data.rec: key 3: label 1.5 is not a class id"), "data.rec: key 3: label 1.5 is not a class id"),
        (OSError(errno.EROFS, os.strerror(errno.EROFS), "/runs/x"), "/runs/x: read-only file system"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/last.pt"), "/runs/x/last.pt: disk full"),
        (OSError(errno.EISDIR, os.strerror(errno.EISDIR), "/out"), "/out: is a directory, expected a file"),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/etc/x"), "/etc/x: permission denied"),
        (OSError(errno.ENOSPC, "disk full: the cache needs 3 MiB", "/c"), "/c: disk full: the cache needs 3 MiB"),
        (FileNotFoundError("verification set lfw.bin does not exist"), "verification set lfw.bin does not exist"),
        (FloatingPointError("runs/x: loss is nan at step 7 (epoch 0)"), "runs/x: loss is nan at step 7 (epoch 0)"),
    ],
)
def test_bad_input_and_os_errors_are_one_line_exit_2(error, line, capsys, monkeypatch):
    monkeypatch.delenv("FACEKD_DEBUG", raising=False)
    code, err = _run_boundary(error, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {line}"), err


def _from_worker(error: Exception) -> Exception:
    """`error` as the DataLoader re-raises it in the main process (its worker's traceback in the message)."""
    from torch._utils import ExceptionWrapper

    try:
        raise error
    except Exception:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    try:
        wrapper.reraise()
    except Exception as e:
        return e
    raise AssertionError("reraise() returned")


def test_errors_from_dataloader_workers_are_one_line(capsys, monkeypatch):
    monkeypatch.delenv("FACEKD_DEBUG", raising=False)
    wrapped = _from_worker(ValueError("faces/bob/2.jpg: cannot decode image (200 bytes)"))
    assert "Original Traceback" in str(wrapped)
    code, err = _run_boundary(wrapped, capsys)
    assert code == 2 and err == "error: faces/bob/2.jpg: cannot decode image (200 bytes)\n"
    code, err = _run_boundary(_from_worker(PermissionError(errno.EACCES, "Permission denied", "/d/1.jpg")), capsys)
    assert code == 2 and err == "error: /d/1.jpg: permission denied\n"


def test_facekd_debug_shows_every_traceback(capsys, monkeypatch):
    monkeypatch.setenv("FACEKD_DEBUG", "1")
    with pytest.raises(ValueError, match="bad"):
        _boundary_app(ValueError("bad"))(["fail"], prog_name="facekd")
    with pytest.raises(KeyError):
        _boundary_app(KeyError("k"))(["fail"], prog_name="facekd")


@pytest.mark.slow
def test_export_random_weights_only_when_asked(tmp_path, capsys):
    """A checkpoint path that does not exist is an error even when it spells a model name; random
    weights are exported only with --random-weights."""
    out = tmp_path / "m.onnx"
    code, _, err = _invoke(["export", "mbf_tiny", "--arch", "mbf_tiny", "--out", str(out)], capsys)
    assert code == 2 and "checkpoint mbf_tiny does not exist" in err and "--random-weights" in err
    assert not out.exists()
    code, out_text, err = _invoke(["export", "mbf_tiny", "--random-weights", "--out", str(out)], capsys)
    assert code == 0 and out.is_file() and "randomly initialised mbf_tiny" in err and str(out) in out_text
    code, _, err = _invoke(["export", "no_such_net", "--random-weights", "--out", str(out)], capsys)
    assert code == 2 and "'no_such_net' is not a model name" in err
