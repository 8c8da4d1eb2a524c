"""Demo framework: registry and tiers, report helpers, runs as content-addressed run configs, the
ReFO experiment on tiny settings, and `facekd demo --quick` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from facekd.demo import registry
from facekd.demo.context import DemoContext
from facekd.demo.registry import Experiment, experiments_for
from facekd.demo.report import FARS, group_table, headline, mean_std, metrics_table
from facekd.demo.settings import DemoSettings, tier_settings


def _ev(tars, acc):
    return {
        "tar_at_far": [{"far": f, "tar": t} for f, t in zip(FARS, tars)],
        "accuracy": {"mean": acc},
        "groups": {"0": {"at_global_threshold": [{"far": 1e-3, "tar": tars[1]}]}},
    }


def test_registry_tiers_nest_and_names_are_unique(monkeypatch):
    monkeypatch.setattr(registry, "EXPERIMENTS", {})
    noop = Experiment("x.quick", "quick", run=lambda ctx: {}, report=lambda ctx, r: "")
    registry.register(noop)
    registry.register(Experiment("x.default", "default", run=noop.run, report=noop.report, order=-1))
    registry.register(Experiment("y.full", "full", run=noop.run, report=noop.report))
    assert [e.name for e in experiments_for("quick")] == ["x.quick"]
    assert [e.name for e in experiments_for("default")] == ["x.default", "x.quick"]
    assert [e.name for e in experiments_for("full", only=["y"])] == ["y.full"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(noop)
    with pytest.raises(ValueError, match="unknown experiment 'z'"):
        experiments_for("full", only=["z"])
    with pytest.raises(ValueError, match="tier"):
        registry.register(Experiment("bad", "huge", run=noop.run, report=noop.report))


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
    assert "| a | 0.700 ± 0.100 |" in group_table({"a": [_ev([0.9, 0.8, 0.7], 0.9), _ev([0.9, 0.6, 0.7], 0.9)]})


def test_tier_settings():
    assert tier_settings("quick").seeds == [0]
    assert tier_settings("default", seeds=[3, 4]).seeds == [3, 4]
    with pytest.raises(ValueError, match="tier"):
        tier_settings("medium")


@pytest.fixture
def tiny_ctx(tmp_path):
    """A demo context on 16-px SynthFaces (6 identities) with 1-epoch iresnet_mini nets."""
    torch.set_num_threads(1)
    net = {"embedding_size": 16, "epochs": 1, "batch_size": 16, "warmup_epochs": 0}
    settings = DemoSettings(
        tier="default",
        seeds=[0, 1],
        data_preset="quick",
        data={
            "image_size": 16,
            "num_train_identities": 6,
            "max_images_per_identity": 10,
            "num_test_identities": 4,
            "test_images_per_identity": 4,
            "num_genuine_pairs": 8,
            "num_impostor_pairs": 16,
            "hard_pair_fraction": None,
        },
        teacher={"arch": "iresnet_mini", **net},
        student={"arch": "iresnet_mini", **net},
        eval_flip=False,
    )
    return DemoContext(tmp_path, settings, progress=False)


def test_students_differing_only_in_the_is_bandwidth_are_different_runs(tiny_ctx):
    # Intrinsic Sampling at 12° and at 3°: same key, same everything else. A sampler recorded by its
    # function name alone made both one run (the 3° student silently reused the 12° one).
    from facekd.demo import bias
    from facekd.demo.spine import kd_baseline

    ctx = tiny_ctx
    ctx.seeds = [0]
    kd = kd_baseline(ctx)
    at12 = bias._students(ctx, {"IS": {"key": "kd_is", "distill": kd, "sample": "intrinsic", "h": 12}})
    at3 = bias._students(ctx, {"IS": {"key": "kd_is", "distill": kd, "sample": "intrinsic", "h": 3}})
    assert at12 != at3, "the 3° student must be trained, not the 12° one reused"
    cfg12, cfg3 = (ctx.student_config(0, distill=kd, sampler=bias.sampler_config("intrinsic", h)) for h in (12, 3))
    dir12, dir3 = ctx.store.run_dir(cfg12), ctx.store.run_dir(cfg3)
    assert dir12 != dir3 and (dir12 / "done").is_file() and (dir3 / "done").is_file()
    saved12, saved3 = (yaml.safe_load((d / "config.yaml").read_text()) for d in (dir12, dir3))
    assert saved12["sampler"]["options"]["bandwidth"] == "12deg" and saved3["sampler"]["options"]["bandwidth"] == "3deg"
    saved3["sampler"] = saved12["sampler"]
    saved3["run_dir"] = saved12["run_dir"]
    assert saved3 == saved12  # nothing else differs
    # the same settings again: the finished run is reused, not retrained
    assert bias._students(ctx, {"IS": {"key": "again", "distill": kd, "sample": "intrinsic", "h": 3}}) == at3


def test_runs_shared_between_papers_are_one_directory(tiny_ctx):
    from facekd.demo.spine import kd, kd_baseline, scratch
    from facekd.refo import student_config

    ctx = tiny_ctx
    a, b = scratch(ctx, 0), scratch(ctx, 0)
    assert a.directory == b.directory and a.directory.parent == ctx.run_dir / "runs"
    assert scratch(ctx, 1).directory != a.directory
    # the data block names where SynthFaces is cached; a run's key holds the content instead
    key = ctx.store.run_key(kd(ctx, 0).config)
    assert "cache_dir" not in key["data"] and key["data"]["fingerprint"] == ctx.data.train.fingerprint()
    assert key["teacher"]["cache"]["model_sha256"] == ctx.teacher_cache().meta["model_sha256"]
    online = ctx.store.run_key(ctx.student_config(0, distill=kd_baseline(ctx), teacher="online"))
    assert online["teacher"]["online"] and online["teacher"]["checkpoint"].startswith("sha256:")
    index = json.loads((ctx.run_dir / "runs.json").read_text())
    assert index["students/scratch/seed0"] == f"runs/{a.digest}" and index["teacher"].startswith("runs/")
    # the demo's FO students go through the ReFO pipeline's step-5 config
    from facekd.demo.refo import fo_from_original, refo_config

    fo = fo_from_original(ctx, 0)
    assert fo.config.head is None and fo.config.distill.lam == 5.0
    expected = student_config(refo_config(ctx, seed=0), ctx.data_config(), ctx.teacher_cache())
    assert ctx.store.run_dir(expected) == fo.directory


def test_refo_main_experiment_on_tiny_settings(tiny_ctx):
    from facekd.demo import refo as demo_refo
    from facekd.demo.spine import scratch

    ctx = tiny_ctx
    result = demo_refo.run_main(ctx)
    assert set(result["students"]) == {"FO from original", "FO from refo"}
    assert all(len(v) == 1 for v in result["students"].values())  # default tier: first seed only
    assert list(result["id"]) == [
        "teacher: original",
        "FO student from original",
        "teacher: refo",
        "FO student from refo",
        "proxy (ReFO, L_cls)",
    ]
    # the ReFO proxy is the spine's scratch student (one run), and the FO student has no head
    stages = json.loads(next((ctx.run_dir / "refo").glob("refo_*/stages.json")).read_text())
    assert stages["proxy"]["dir"] == str(scratch(ctx, 0).directory)
    fo = torch.load(f"{stages['student']['dir']}/checkpoints/last.pt", weights_only=True)["task"]
    assert not any(k.startswith("head.") for k in fo)
    # a β2 sweep point reuses proxy, reverse distillation and both caches: only a student is new
    res = demo_refo.pipeline(ctx, demo_refo.refo_config(ctx, beta2=20.0))
    assert res.proxy.directory == scratch(ctx, 0).directory
    assert [r["state"] for r in res.stages.values()] == ["done", "done", "done", "done", "new"]
    text = demo_refo.report_main(ctx, json.loads(json.dumps(result)))
    assert "FO from refo" in text and "574.0 MB" in text


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
    index = json.loads((out / "runs.json").read_text())
    for label in ("teacher", "students/scratch/seed0", "students/kd_l2/seed0"):
        assert (out / index[label] / "done").exists() and (out / index[label] / "backbone.pth").exists()
    # a second invocation reuses the stored result (no training) and rewrites the same table
    with pytest.raises(SystemExit) as info:
        app(["demo", "--quick", "--out", str(out), "--no-progress"], prog_name="facekd")
    assert info.value.code == 0
    assert "stored result reused" in capsys.readouterr().out
    assert (out / "report.md").read_text().split("## ")[1] == report.split("## ")[1]
    # a result stored under another key (other settings or experiment code) is recomputed from the
    # stored trained runs
    store = out / "experiments" / "spine.kd_baseline.json"
    saved = json.loads(store.read_text())
    store.write_text(json.dumps({**saved, "key": "stale"}))
    with pytest.raises(SystemExit) as info:
        app(["demo", "--quick", "--out", str(out), "--no-progress"], prog_name="facekd")
    assert info.value.code == 0
    log = capsys.readouterr().out
    assert "spine.kd_baseline: running" in log and "stored result reused" not in log and "training" not in log
    assert json.loads(store.read_text())["key"] != "stale"
    section = (out / "report.md").read_text().split("## ")[1]
    assert section.split("_experiment")[0] == report.split("## ")[1].split("_experiment")[0]  # same tables
