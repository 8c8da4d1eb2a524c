"""The user's whole path from the command line: a run with an ONNX teacher and hflip on RecordIO
that is SIGKILLed, resumed and finishes with the weights of an uninterrupted run; and the reduced
rehearsal (scripts/rehearsal.sh at tiny sizes) with its closing table."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from facekd.build import run_training
from facekd.config import load_config
from facekd.data.recordio import write_recordio
from facekd.models import get_model
from facekd.onnx import export_onnx

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16


def _recordio(tmp_path, n=64, classes=4) -> Path:
    """Left-right asymmetric images (a flip changes every embedding), identities contiguous."""
    g = np.random.default_rng(1)
    ramp = np.linspace(0, 200, SIZE)[None, :, None]
    labels = np.sort(np.arange(n) % classes)
    images = [np.clip(ramp + 40 * y + g.integers(0, 30, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for y in labels]
    write_recordio(zip(images, labels), tmp_path / "rec/")
    return tmp_path / "rec"


def _config(tmp_path, run_dir: Path) -> Path:
    torch.manual_seed(7)
    teacher = get_model("mbf_tiny", embedding_size=32, input_size=SIZE).eval()
    onnx_path = tmp_path / "teacher.onnx"
    if not onnx_path.exists():
        export_onnx(teacher, onnx_path, input_size=SIZE, pixel_input=True)
    raw = {
        "data": {"kind": "recordio", "path": str(_recordio(tmp_path)), "hflip": True},
        "model": {"arch": "mbf_tiny", "embedding_size": 16},
        "distill": {"loss": "l2", "lambda": 5.0},
        "teacher": {"onnx": str(onnx_path)},
        "sampler": {"name": "intrinsic", "options": {"bandwidth": "12deg"}},
        "train": {"epochs": 6, "batch_size": 8, "lr": 0.05, "checkpoint_every": 1, "log_every": 1},
        "run_dir": str(run_dir),
    }
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_onnx_teacher_hflip_recordio_run_is_killed_resumed_and_finishes(tmp_path):
    killed = tmp_path / "killed"
    config = _config(tmp_path, killed)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "facekd.cli", "train", str(config), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = torch.load(last, weights_only=True)["step"]
    total = 6 * (64 // 8)
    assert not (killed / "done").exists() and 1 <= step < total
    cache_meta = (killed / "teacher_cache" / "meta.json").read_text()

    # the second process takes the run over (the first one's lock died with it) and finishes it
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("done:") and (killed / "done").exists()
    assert (killed / "teacher_cache" / "meta.json").read_text() == cache_meta  # embedded once, reused
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1)), "each step once, across the kill"
    meta = json.loads(cache_meta)
    assert meta["model_sha256"] == hashlib.sha256((tmp_path / "teacher.onnx").read_bytes()).hexdigest()

    # the same weights as a run that was never interrupted
    torch.set_num_threads(1)
    reference = run_training(load_config(_config(tmp_path, tmp_path / "uninterrupted")), progress=False)
    resumed = torch.load(killed / "backbone.pth", weights_only=True)
    for k, v in reference.student.state_dict().items():
        assert torch.allclose(v.float(), resumed[k].float(), atol=1e-6, rtol=1e-5), k


REDUCED = {
    "REHEARSAL_IMAGE_SIZE": "32",
    "REHEARSAL_TRAIN_IDENTITIES": "10",
    "REHEARSAL_TEST_IDENTITIES": "12",
    "REHEARSAL_TEST_IMAGES": "4",
    "REHEARSAL_GENUINE_PAIRS": "40",
    "REHEARSAL_IMPOSTOR_PAIRS": "400",
    "REHEARSAL_TEACHER_EPOCHS": "2",
    "REHEARSAL_STUDENT_EPOCHS": "3",
    "REHEARSAL_BATCH": "16",
}


def _console_script() -> str:
    script = Path(sys.executable).parent / "facekd"
    if not script.exists():
        pytest.skip("the facekd console script is not installed next to this Python (make venv)")
    return str(script)


@pytest.mark.slow
def test_reduced_rehearsal_runs_the_whole_path(tmp_path):
    out = tmp_path / "rehearsal"
    env = {**os.environ, **REDUCED, "OMP_NUM_THREADS": "1", "FACEKD": _console_script(), "PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "rehearsal.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "killed (SIGKILL) after step" in res.stdout and (out / "student" / "done").exists()
    assert "ONNX check of" in res.stdout and ": PASS" in res.stdout
    table = (out / "rehearsal.md").read_text()
    assert "| teacher iresnet_tiny (ONNX) |" in table and "| student mbf_tiny (ONNX teacher, hflip, IS) |" in table
    steps = [line.split("\t")[0] for line in (out / "times.tsv").read_text().splitlines()[1:]]
    assert steps[0].startswith("1 export-synth") and "4 resume student" in steps and len(steps) == 11
    assert all(f"| {s} |" in table for s in steps)
    teacher_cache = json.loads((out / "student" / "teacher_cache" / "meta.json").read_text())
    assert teacher_cache["model_sha256"] == hashlib.sha256((out / "teacher.onnx").read_bytes()).hexdigest()
