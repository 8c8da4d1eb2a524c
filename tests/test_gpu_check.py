"""benchmarks/gpu_check.sh --smoke runs end to end on CPU and writes its JSON and markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_smoke_runs_end_to_end_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "train.rc").read_text().strip() == "0", (tmp_path / "train.log").read_text()[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = report["train"]["rows"]
    assert report["train"]["complete"] and report["train"]["smoke"]
    assert {r["mode"] for r in rows} == {"reference loop", "full head", "sharded head (r=1.0)"}
    assert len(rows) == 3 * 2 * 3 and all(r["images_per_s"] > 0 for r in rows)
    assert all(r["vs_reference"] > 0 for r in rows)
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| mbf_tiny | 8 | 2,000 |" in md and "facekd ≥ reference loop" in md
