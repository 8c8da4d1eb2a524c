"""Demo framework: registry and tiers, report helpers, and `facekd demo --quick` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facekd.demo import core
from facekd.demo.core import Experiment, experiments_for, headline, mean_std, metrics_table


def _ev(tars, acc):
    return {
        "tar_at_far": [{"far": f, "tar": t} for f, t in zip(core.FARS, tars)],
        "accuracy": {"mean": acc},
        "groups": {"0": {"at_global_threshold": [{"far": 1e-3, "tar": tars[1]}]}},
    }


def test_registry_tiers_nest_and_names_are_unique(monkeypatch):
    monkeypatch.setattr(core, "EXPERIMENTS", {})
    noop = Experiment("x.quick", "quick", run=lambda ctx: {}, report=lambda ctx, r: "")
    core.register(noop)
    core.register(Experiment("x.default", "default", run=noop.run, report=noop.report, order=-1))
    core.register(Experiment("y.full", "full", run=noop.run, report=noop.report))
    assert [e.name for e in experiments_for("quick")] == ["x.quick"]
    assert [e.name for e in experiments_for("default")] == ["x.default", "x.quick"]
    assert [e.name for e in experiments_for("full", only=["y"])] == ["y.full"]
    with pytest.raises(ValueError, match="already registered"):
        core.register(noop)
    with pytest.raises(ValueError, match="unknown experiment 'z'"):
        experiments_for("full", only=["z"])
    with pytest.raises(ValueError, match="tier"):
        core.register(Experiment("bad", "huge", run=noop.run, report=noop.report))


def test_mean_std_and_tables():
    assert mean_std([0.5]) == "0.5000"
    assert mean_std([0.5, 0.7]) == f"0.6000 ± {np.std([0.5, 0.7]):.4f}"
    assert headline(_ev([0.9, 0.8, 0.7], 0.95)) == {
        "TAR@1e-02": 0.9,
        "TAR@1e-03": 0.8,
        "TAR@1e-04": 0.7,
        "accuracy": 0.95,
    }
    table = metrics_table({"a": [_ev([0.9, 0.8, 0.7], 0.95), _ev([0.7, 0.6, 0.5], 0.85)]})
    assert "| a (n=2) | 0.8000 ± 0.1000 | 0.7000 ± 0.1000 | 0.6000 ± 0.1000 | 0.9000 ± 0.0500 |" in table
    assert "| a | 0.700 ± 0.100 |" in core.group_table({"a": [_ev([0.9, 0.8, 0.7], 0.9), _ev([0.9, 0.6, 0.7], 0.9)]})


def test_tier_settings():
    assert core.tier_settings("quick").seeds == [0]
    assert core.tier_settings("default", seeds=[3, 4]).seeds == [3, 4]
    with pytest.raises(ValueError, match="tier"):
        core.tier_settings("medium")


@pytest.mark.slow
def test_demo_quick_end_to_end_and_resume(tmp_path, capsys):
    from facekd.cli import app

    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as info:
        app(["demo", "--quick", "--out", str(out), "--no-progress"], prog_name="facekd")
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err[-3000:]
    report = (out / "report.md").read_text()
    assert "teacher `iresnet_tiny`" in report and "from scratch" in report and "KD (ArcFace" in report
    assert "TAR@1e-04" in report and "wall time" in report
    assert (out / "roc_spine.png").stat().st_size > 1000 and (out / "config.yaml").exists()
    result = json.loads((out / "experiments" / "spine.kd_baseline.json").read_text())["result"]
    teacher = headline(result["teacher"][0])
    scratch = headline(result["scratch"][0])
    assert 0.0 < scratch["TAR@1e-04"] < 1.0, "SynthFaces must be learnable but not trivial"
    assert teacher["TAR@1e-02"] > scratch["TAR@1e-02"] - 0.02, "the teacher should not be worse than the student"
    for run in ("teacher", "students/scratch/seed0", "students/kd_l2/seed0"):
        assert (out / run / "done").exists() and (out / run / "backbone.pth").exists()
    # a second invocation reuses the stored result (no training) and rewrites the same table
    with pytest.raises(SystemExit) as info:
        app(["demo", "--quick", "--out", str(out), "--no-progress"], prog_name="facekd")
    assert info.value.code == 0
    assert "stored result reused" in capsys.readouterr().out
    assert (out / "report.md").read_text().split("## ")[1] == report.split("## ")[1]
    # a result stored by other experiment code is recomputed (from the stored trained models)
    store = out / "experiments" / "spine.kd_baseline.json"
    saved = json.loads(store.read_text())
    store.write_text(json.dumps({**saved, "code": "stale"}))
    with pytest.raises(SystemExit) as info:
        app(["demo", "--quick", "--out", str(out), "--no-progress"], prog_name="facekd")
    assert info.value.code == 0
    log = capsys.readouterr().out
    assert "spine.kd_baseline: running" in log and "stored result reused" not in log and "training" not in log
    assert json.loads(store.read_text())["code"] != "stale"
