"""SynthFaces exported to RecordIO + .bin + IJB-style meta goes through
`facekd train`, `facekd eval --bin`, `facekd eval-ijb` and `facekd export --check` from the CLI alone.

The export runs as a subprocess of the console script (as a user would type it); the other steps call
the same typer app in-process (the console script's entry point, `facekd.cli:app`), which keeps the
test at ~15 s on one CPU thread.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from facekd.cli import app


def _facekd(args, capsys):
    with pytest.raises(SystemExit) as info:
        app([str(a) for a in args], prog_name="facekd")
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "facekd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "facekd.cli"]


@pytest.mark.slow
def test_synthfaces_real_data_path_from_the_cli(tmp_path, capsys):
    data = tmp_path / "synth"
    done = subprocess.run(
        [*_console_script(), "export-synth", str(data), "--preset", "quick"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    for name in (
        "train.rec",
        "train.idx",
        "property",
        "synth_val.bin",
        "IJBC/meta/ijbc_face_tid_mid.txt",
        "IJBC/meta/ijbc_template_pair_label.txt",
        "IJBC/meta/ijbc_name_5pts_score.txt",
    ):
        assert (data / name).is_file(), name
    exported = json.loads((data / "export.json").read_text())

    # train a tiny MobileFaceNet with ArcFace on the RecordIO
    run = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"kind": "recordio", "path": str(data)},
                "model": {"arch": "mbf_tiny", "embedding_size": 64},
                "head": {"name": "arcface", "s": 32, "m": 0.3},
                "train": {"epochs": 8, "batch_size": 64, "lr": 0.1, "log_every": 1},
                "run_dir": str(run),
            }
        )
    )
    code, out, err = _facekd(["train", cfg, "--no-progress"], capsys)
    assert code == 0, err
    assert (run / "backbone.pth").is_file() and (run / "config.yaml").is_file()
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["step"] == 8 * (exported["recordio"]["num_images"] // 64)

    # .bin verification, insightface's log lines; the trained net beats chance clearly
    code, out, err = _facekd(
        [
            "eval",
            "--arch",
            "mbf_tiny",
            "--checkpoint",
            run / "backbone.pth",
            "--bin",
            data / "synth_val.bin",
            "--step",
            "40",
            "--out",
            tmp_path / "ev",
        ],
        capsys,
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert re.fullmatch(r"\[synth_val\]\[40\]XNorm: \d+\.\d{6}", lines[0]), lines
    m = re.fullmatch(r"\[synth_val\]\[40\]Accuracy-Flip: (0\.\d{5})\+-(0\.\d{5})", lines[1])
    assert m, lines
    assert lines[2] == f"[synth_val][40]Accuracy-Highest: {m.group(1)}"
    acc = float(m.group(1))
    assert acc > 0.8, acc
    saved = json.loads((tmp_path / "ev" / "eval_bin.json").read_text())["sets"][0]
    assert saved["n_pairs"] == exported["bin_pairs"] and abs(saved["accuracy_flip"] - acc) < 1e-5

    # IJB-C-style 1:1 from the checkpoint (run dir), then the same from the saved features: one code path
    code, out, err = _facekd(
        ["eval-ijb", "--checkpoint", run, "--arch", "mbf_tiny", "--meta", data / "IJBC", "--out", tmp_path / "ijb"],
        capsys,
    )
    assert code == 0, err
    assert f"IJBC N1D1F1: {exported['ijb_genuine_pairs']} genuine / {exported['ijb_impostor_pairs']} impostor" in out
    feats = np.load(tmp_path / "ijb" / "IJBC_features.npy")
    assert feats.shape == (exported["ijb_images"], 64)
    table = out[out.index("| convention") :]
    tar = [float(v) for v in re.search(r"\| strict \|(.*)\|", table).group(1).split("|")]
    assert tar[-1] > 50.0  # TAR@FAR=1e-1 (%), chance would be ~10
    scores = np.load(tmp_path / "ijb" / "IJBC.npy")
    assert scores.shape == (exported["ijb_genuine_pairs"] + exported["ijb_impostor_pairs"],)
    code, out2, err = _facekd(
        [
            "eval-ijb",
            "--features",
            tmp_path / "ijb" / "IJBC_features.npy",
            "--features-flip",
            tmp_path / "ijb" / "IJBC_features_flip.npy",
            "--meta",
            data / "IJBC",
            "--out",
            tmp_path / "ijb2",
        ],
        capsys,
    )
    assert code == 0, err
    assert out2[out2.index("| convention") :] == table
    np.testing.assert_array_equal(np.load(tmp_path / "ijb2" / "IJBC.npy"), scores)

    # ONNX export + the MFR submission checks
    onnx_path = tmp_path / "student.onnx"
    code, out, err = _facekd(
        ["export", run / "backbone.pth", "--arch", "mbf_tiny", "--out", onnx_path, "--check"], capsys
    )
    assert code == 0, err + out
    assert onnx_path.is_file() and ": PASS" in out and "[ok] runs on onnxruntime" in out and "[FAIL]" not in out


def test_cli_input_errors(tmp_path, capsys):
    code, _, err = _facekd(["eval-ijb", "--meta", tmp_path], capsys)
    assert code == 2 and "exactly one of --features, --checkpoint or --onnx" in err
    code, _, err = _facekd(["eval-ijb", "--checkpoint", tmp_path, "--meta", tmp_path], capsys)
    assert code == 2 and "--checkpoint needs --arch" in err
    code, _, err = _facekd(["eval", "--arch", "mbf_tiny", "lfw.bin"], capsys)
    assert code == 2 and "unexpected argument lfw.bin; .bin sets go after --bin" in err
    code, _, err = _facekd(["eval", "--arch", "mbf_tiny", "--bin", tmp_path / "lfw.bin"], capsys)
    assert code == 2 and err.strip() == f"error: verification set {tmp_path / 'lfw.bin'} does not exist"
