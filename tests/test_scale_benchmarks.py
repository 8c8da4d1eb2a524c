"""The scale benchmarks run end to end at smoke size (their numbers are not asserted: timings
belong to benchmarks/, not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=BENCH, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_gpu_density_smoke_writes_its_tables(tmp_path):
    out = _run(["gpu_density.py", "--smoke", "--out", str(tmp_path)], tmp_path)
    rows = json.loads((tmp_path / "gpu_density.json").read_text())["rows"]
    steps = [r["step"] for r in rows]
    assert any(s.startswith("exact density, 3,000 rows, float32") for s in steps)
    assert any(s.startswith("Extrinsic Sampling, one epoch of 3,000") for s in steps)
    dens = next(r for r in rows if r["step"].startswith("exact density, 3,000"))
    assert dens["max_rel_err"] < 1e-5  # float32 against float64 products
    assert "| step | seconds | result |" in (tmp_path / "gpu_density.md").read_text() and "float64" in out


@pytest.mark.slow
def test_scale_quick_prints_exponents(tmp_path):
    out = _run(["scale.py", "--quick", "--only", "extrinsic", "sampler", "--json", str(tmp_path / "s.json")], tmp_path)
    assert "growth exponent" in out and "recall" in out
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [len(r["cpu"]) for r in rows] == [3, 2] and all(r["exponent"] > 0 for r in rows)
