"""Demo framework: registry and tiers, report helpers, runs as content-addressed run configs, the
ReFO experiment on tiny settings, and `facekd demo --quick` end to end."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
import yaml

from facekd.demo import registry
from facekd.demo.compare import claim, difference_cell, metric_values, paired_difference, rows_of, student_metrics
from facekd.demo.context import DemoContext
from facekd.demo.registry import Experiment, experiments_for
from facekd.demo.report import FARS, claims_table, comparison_table, headline, mean_std, selection_table
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


def _rows(table, values):
    """Rows {method: {seed: TAR@1e-03}} of a table."""
    return rows_of(
        table, {m: {s: {"TAR@1e-03": v, "accuracy": 0.9} for s, v in by.items()} for m, by in values.items()}
    )


def test_paired_difference_matches_a_direct_t_interval():
    from scipy import stats

    a = {0: 0.71, 1: 0.74, 2: 0.70, 3: 0.75}
    b = {0: 0.69, 1: 0.70, 2: 0.69, 3: 0.71, 9: 0.1}  # seed 9 has no partner: ignored
    d = [a[s] - b[s] for s in range(4)]
    mean, sd = sum(d) / 4, float(np.std(d, ddof=1))
    half = stats.t.ppf(0.975, 3) * sd / 2
    out = paired_difference(a, b)
    assert out["n"] == 4 and out["seeds"] == [0, 1, 2, 3]
    assert out["mean"] == pytest.approx(mean) and out["lo"] == pytest.approx(mean - half)
    assert out["hi"] == pytest.approx(mean + half) and out["verdict"] == "higher"
    # a difference whose interval covers 0 is within noise; one seed has no interval
    assert paired_difference({0: 0.5, 1: 0.6}, {0: 0.55, 1: 0.5})["verdict"] == "within noise"
    one = paired_difference({0: 0.5}, {0: 0.4})
    assert one["verdict"] == "within noise" and "one seed" in difference_cell(one)
    assert "within noise" in difference_cell(paired_difference({0: 0.5, 1: 0.6}, {0: 0.55, 1: 0.5}))


def test_claim_verdicts():
    up, down = {0: 0.6, 1: 0.61, 2: 0.62}, {0: 0.5, 1: 0.5, 2: 0.52}
    assert claim("p", "x", up, down)["verdict"] == "reproduces"
    assert claim("p", "x", down, up)["verdict"] == "opposite"
    assert claim("p", "x", down, up, expected="lower")["verdict"] == "reproduces"
    noisy = {0: 0.7, 1: 0.4, 2: 0.55}
    assert claim("p", "x", noisy, down)["verdict"] == "within noise"
    assert claim("p", "x", noisy, down, expected="not_lower")["verdict"] == "reproduces"
    assert claim("p", "x", down, up, expected="not_lower")["verdict"] == "opposite"
    with pytest.raises(ValueError, match="expected"):
        claim("p", "x", up, down, expected="bigger")


def test_mean_std_and_tables():
    assert mean_std([0.5]) == "0.5000"
    assert mean_std([0.5, 0.7]) == f"0.6000 ± {np.std([0.5, 0.7], ddof=1):.4f}"
    assert headline(_ev([0.9, 0.8, 0.7], 0.95)) == {
        "TAR@1e-02": 0.9,
        "TAR@1e-03": 0.8,
        "TAR@1e-04": 0.7,
        "accuracy": 0.95,
    }
    metrics = student_metrics(_ev([0.9, 0.8, 0.7], 0.95))
    assert metrics["TAR@1e-03"] == 0.8 and metrics["group0 TAR@1e-03"] == 0.8
    rows = _rows("t", {"base": {0: 0.5, 1: 0.52, 2: 0.51}, "new": {0: 0.6, 1: 0.63, 2: 0.61}})
    table = comparison_table(
        rows, "t", {"base": "baseline", "new": "the method"}, baseline="base", columns=("TAR@1e-03",)
    )
    assert "| the method | 3 | 0.6133 ± 0.0153 | +0.1033 [" in table and "| baseline | 3 |" in table
    assert "(baseline)" in table
    claims = [
        claim(
            "PAD",
            "new beats base",
            metric_values(rows, "t", "new", "TAR@1e-03"),
            metric_values(rows, "t", "base", "TAR@1e-03"),
        )
    ]
    assert "| PAD | new beats base | TAR@1e-03 | +0.1033 [" in claims_table(claims) and "| yes |" in claims_table(
        claims
    )
    sel = {"name": "kd_lambda", "values": [5.0, 20.0], "mean": {"5": 0.5, "20": 0.6}, "best": 20.0}
    assert "| kd_lambda | 5, 20 | 5: 0.5000, 20: 0.6000 | 20 |" in selection_table([sel])


def test_tier_settings():
    assert tier_settings("quick").seeds == [0]
    assert tier_settings("default").seeds == [0, 1, 2] and tier_settings("default").teacher_seeds == [0]
    assert tier_settings("full").teacher_seeds == [0, 1, 2]
    assert tier_settings("default", seeds=[3, 4]).seeds == [3, 4]
    # threads and workers do not define results
    s = tier_settings("default")
    assert s.results_key() == s.model_copy(update={"threads": 2, "workers": 1}).results_key()
    with pytest.raises(ValueError, match="tier"):
        tier_settings("medium")


@pytest.fixture
def tiny_ctx(tmp_path):
    """A demo context on 16-px SynthFaces (6 identities, with its own validation split) with 1-epoch
    iresnet_mini nets and one-value grids (nothing searched)."""
    torch.set_num_threads(1)
    net = {"embedding_size": 16, "epochs": 1, "batch_size": 16, "warmup_epochs": 0}
    settings = DemoSettings(
        tier="default",
        seeds=[0, 1],
        data_preset="quick",
        data=TINY_DATA,
        teacher={"arch": "iresnet_mini", **net},
        student={"arch": "iresnet_mini", **net},
        grid={"kd_lambda": [5.0], "is_bandwidth_deg": [12.0]},
        eval_flip=False,
        workers=1,
    )
    return DemoContext(tmp_path, settings, progress=False)


TINY_DATA = {
    "image_size": 16,
    "num_train_identities": 6,
    "max_images_per_identity": 10,
    "num_test_identities": 4,
    "test_images_per_identity": 4,
    "num_genuine_pairs": 8,
    "num_impostor_pairs": 16,
    "hard_pair_fraction": None,
}


@pytest.mark.slow
def test_students_differing_only_in_the_is_bandwidth_are_different_runs(tiny_ctx):
    # Intrinsic Sampling at 12° and at 3°: same key, same everything else. A sampler recorded by its
    # function name alone made both one run (the 3° student silently reused the 12° one).
    from facekd.demo import bias
    from facekd.demo.spine import kd_baseline

    ctx = tiny_ctx
    ctx.seeds = [0]
    kd = kd_baseline(ctx)
    at12 = bias.train_variants(ctx, {"IS": {"key": "kd_is", "distill": kd, "sample": "intrinsic", "h": 12}})
    at3 = bias.train_variants(ctx, {"IS": {"key": "kd_is", "distill": kd, "sample": "intrinsic", "h": 3}})
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
    assert bias.train_variants(ctx, {"IS": {"key": "again", "distill": kd, "sample": "intrinsic", "h": 3}}) == at3


@pytest.mark.slow
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


@pytest.mark.slow
def test_selection_uses_the_validation_split_and_is_stored(tiny_ctx, monkeypatch):
    from facekd.demo.selection import select
    from facekd.demo.spine import kd_block

    ctx = tiny_ctx
    scored: list[str] = []
    evaluate = ctx.evaluate

    def spy(model, split="test"):
        scored.append(split)
        return evaluate(model, split)

    monkeypatch.setattr(ctx, "evaluate", spy)
    res = select(ctx, "kd_lambda", [1.0, 10.0], lambda v, s: ctx.student_config(s, distill=kd_block(v)))
    assert scored == ["val", "val"], "a grid is scored on the validation pairs only"
    assert set(res["mean"]) == {"1", "10"} and res["best"] == max([1.0, 10.0], key=lambda v: res["mean"][f"{v:g}"])
    stored = json.loads((ctx.run_dir / "selection" / "kd_lambda.json").read_text())
    assert stored["result"] == res
    # the same grid again: reused by its digest, nothing trained or scored
    monkeypatch.setattr(ctx, "train_many", lambda runs: pytest.fail("a stored grid must not be trained again"))
    assert select(ctx, "kd_lambda", [1.0, 10.0], lambda v, s: ctx.student_config(s, distill=kd_block(v))) == res
    assert scored == ["val", "val"]
    # one value: chosen without training
    assert select(ctx, "x", [3.0], lambda v, s: ctx.student_config(s))["best"] == 3.0


@pytest.mark.slow
def test_pad_experiment_compares_at_equal_and_effective_weight_without_substitution(tiny_ctx):
    from facekd.demo import pad as demo_pad

    ctx = tiny_ctx
    result = demo_pad.run_weighting(ctx)
    methods = {r["method"] for r in result["rows"] if r["table"] == "pad"}
    assert methods == {"uniform", "PAD", "uniform at PAD's effective λ"}
    assert {r["seed"] for r in result["rows"] if r["table"] == "pad"} == {0, 1}
    index = json.loads((ctx.run_dir / "runs.json").read_text())

    def config_of(label: str, seed: int) -> dict:
        return yaml.safe_load((ctx.run_dir / index[f"students/{label}/seed{seed}"] / "config.yaml").read_text())

    for seed in (0, 1):
        cfg = functools.partial(config_of, seed=seed)
        assert cfg("kd_l2")["distill"]["lambda"] == result["lambda"]["uniform"] == 5.0
        assert cfg("pad")["distill"]["lambda"] == result["lambda"]["PAD"] and cfg("pad")["distill"]["options"] == {}
        effective = cfg("kd_l2_pad_effective")["distill"]
        assert effective["lambda"] == result["lambda"]["effective"][str(seed)] and effective["weighting"] == "uniform"
    for stats in result["pad"]["PAD"].values():
        assert {"log_sigma2_std", "spearman_sigma2_gap", "by_group", "by_nuisance", "teacher"} <= set(stats)
    assert len(result["claims"]) == 6
    text = demo_pad.report_weighting(ctx, json.loads(json.dumps(result)))
    assert "effective" in text and "Spearman" in text


@pytest.mark.slow
def test_train_many_runs_side_by_side(tiny_ctx):
    from facekd.demo.spine import scratch_config

    ctx = tiny_ctx
    ctx.settings = ctx.settings.model_copy(update={"workers": 2})
    runs = ctx.train_many([(scratch_config(ctx, s), f"students/scratch/seed{s}") for s in (0, 1)])
    assert len({r.directory for r in runs}) == 2 and all((r.directory / "done").exists() for r in runs)


@pytest.mark.slow
def test_refo_main_experiment_on_tiny_settings(tiny_ctx):
    from facekd.demo import refo as demo_refo
    from facekd.demo.spine import scratch

    ctx = tiny_ctx
    result = demo_refo.run_main(ctx)
    students = {(r["method"], r["seed"]) for r in result["rows"] if r["table"] == "refo"}
    assert students == {(m, s) for m in ("FO from original", "FO from refo") for s in (0, 1)}
    assert list(result["id"]) == [
        "teacher: original",
        "teacher: refo",
        "FO student from original",
        "FO student from refo",
        "proxy (ReFO, L_cls)",
    ]
    assert result["claims"][0]["difference"]["n"] == 2 and "closed" in result["intrinsic_gap"]["refo"]
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
    assert "FO from refo" in text and "574.0 MB" in text and "intrinsic dimension" in text


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
    assert "TAR@1e-04" in report and "wall time" in report and "## Paper claims tested" in report
    assert (out / "roc_spine.png").stat().st_size > 1000 and (out / "config.yaml").exists()
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert {(r["experiment"], r["table"], r["method"]) for r in rows} >= {
        ("spine.kd_baseline", "teacher", "teacher"),
        ("spine.kd_baseline", "spine", "scratch"),
        ("spine.kd_baseline", "spine", "KD"),
    }
    scratch = metric_values(rows, "spine", "scratch", "TAR@1e-04")[0]
    teacher = metric_values(rows, "teacher", "teacher", "TAR@1e-02")[0]
    assert 0.0 < scratch < 1.0, "SynthFaces must be learnable but not trivial"
    assert teacher > metric_values(rows, "spine", "scratch", "TAR@1e-02")[0] - 0.02
    assert summary["claims"][0]["experiment"] == "spine.kd_baseline" and summary["wall_s"] > 0
    index = json.loads((out / "runs.json").read_text())
    for label in ("teacher", "students/scratch/seed0", "students/kd_l2/seed0"):
        assert (out / index[label] / "done").exists() and (out / index[label] / "backbone.pth").exists()

    def body(text: str) -> str:  # the report without its timing lines
        return "\n".join(line for line in text.splitlines() if "wall time" not in line and "run time" not in line)

    # a second invocation reuses the stored result (no training) and rewrites the same report
    with pytest.raises(SystemExit) as info:
        app(["demo", "--quick", "--out", str(out), "--no-progress"], prog_name="facekd")
    assert info.value.code == 0
    assert "stored result reused" in capsys.readouterr().out
    assert body((out / "report.md").read_text()) == body(report)
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
    assert body((out / "report.md").read_text()) == body(report)


@pytest.mark.slow
def test_face_baselines_train_on_the_same_budget(tiny_ctx):
    from facekd.demo import baselines

    ctx = tiny_ctx
    ctx.seeds = [0]
    result = baselines.run_baselines(ctx)
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["KD", "KD + IS", "PAD", "EKD", "GKD", "AdaDistill", "MarginDistillation"]
    index = json.loads((ctx.run_dir / "runs.json").read_text())
    configs = {
        m: yaml.safe_load((ctx.run_dir / index[f"students/baseline_{m}/seed0"] / "config.yaml").read_text())
        for m in methods
    }
    assert {c["train"]["epochs"] for c in configs.values()} == {1} and {
        c["train"]["seed"] for c in configs.values()
    } == {0}
    assert configs["AdaDistill"]["head"] is None and configs["EKD"]["head"]["name"] == "arcface"
    assert len(result["claims"]) == 4


@pytest.mark.slow
def test_prefetch_trains_every_default_run_before_the_experiments(tiny_ctx, capsys):
    """The runner's prefetch names every run of the default tier (the teacher first, grids once it is
    done, then what the chosen values need), so the experiments themselves train nothing."""
    from facekd.demo.registry import experiments_for
    from facekd.demo.runner import prefetch

    ctx = tiny_ctx
    ctx.settings = ctx.settings.model_copy(
        update={"grid": ctx.settings.grid.model_copy(update={"kd_lambda": [1.0, 5.0]})}
    )
    chosen = experiments_for("default")
    prefetch(ctx, chosen)
    trained = [
        line.split("training ")[1].split(" (")[0]
        for line in capsys.readouterr().out.splitlines()
        if "training " in line
    ]
    # the teacher first (here the scratch student of seed 0 is the teacher's run: the tiny settings
    # give both the same network and training); a grid run before the other runs it makes nameable
    assert trained[0] == "teacher/seed0" and len(trained) == len(set(trained))
    assert trained.index("selection/kd/1/seed0") < trained.index("students/bias_kd_es/seed0")
    for exp in chosen:
        exp.run(ctx)
    assert "training" not in capsys.readouterr().out


@pytest.mark.slow
def test_teacher_plateau_scores_teachers_on_validation(tiny_ctx):
    from facekd.demo import spine

    result = spine.run_plateau(tiny_ctx)
    assert result["epochs"] == [1, 2] and result["tier_epochs"] == 1
    metrics = {r["method"]: r["metrics"] for r in result["rows"]}
    assert set(metrics) == {"1 epochs", "2 epochs"}
    assert {"validation TAR@1e-03", "TAR@1e-03"} <= set(metrics["2 epochs"])
    assert "Validation TAR@1e-3 at 1 epochs" in spine.report_plateau(tiny_ctx, result)


def test_summary_is_strict_json():
    from facekd.demo.runner import _finite

    assert _finite({"a": [1.0, float("nan")], "b": {"c": float("inf"), "d": "x"}}) == {
        "a": [1.0, None],
        "b": {"c": None, "d": "x"},
    }


@pytest.mark.slow
def test_fashion_mnist_check_runs_on_idx_files(tiny_ctx, tmp_path, monkeypatch):
    """The real-data experiment on a tiny stand-in written as IDX files (the Debian package's layout);
    skipped with a note when the files are absent."""
    import struct

    from facekd.demo import fmnist

    monkeypatch.setenv(fmnist.PATH_ENV, str(tmp_path / "nowhere"))
    assert "Fashion-MNIST not found" in fmnist.run_fmnist(tiny_ctx)["skipped"]
    g = np.random.default_rng(0)
    for split, n in (("train", 80), ("t10k", 20)):
        labels = (np.arange(n) % 4).astype(np.uint8)
        images = np.clip(g.integers(0, 256, (4, 28, 28))[labels] + g.integers(-30, 30, (n, 28, 28)), 0, 255)
        for stem, data in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            header = bytes([0, 0, 0x08, data.ndim]) + b"".join(struct.pack(">I", d) for d in data.shape)
            (tmp_path / stem).write_bytes(header + data.astype(">u1").tobytes())
    monkeypatch.setenv(fmnist.PATH_ENV, str(tmp_path))
    monkeypatch.setattr(fmnist, "TEACHER", {**fmnist.TEACHER, "epochs": 1})
    monkeypatch.setattr(fmnist, "STUDENT", {**fmnist.STUDENT, "epochs": 1})
    monkeypatch.setattr(fmnist, "LAMBDAS", (1.0,))
    monkeypatch.setattr(fmnist, "IS_DEGREES", (12.0,))
    monkeypatch.setattr(fmnist, "BATCH", 16)
    result = fmnist.run_fmnist(tiny_ctx)
    methods = {r["method"] for r in result["rows"] if r["table"] == "fmnist"}
    assert methods == {"scratch", "KD (L2)", "PAD-L2", "KD + IS"} and result["n"] == [72, 8, 20]
    assert {"log_sigma2_std", "spearman_sigma2_gap"} <= set(result["pad"]["PAD-L2"]["0"])
    assert "top-1" in fmnist.report_fmnist(tiny_ctx, json.loads(json.dumps(result)))


def test_pad_claims_read_the_pad_statistics_rows():
    """Every PAD claim is measured from rows the experiment writes (none left without values)."""
    from facekd.demo.pad import STAT_KEYS, _claims, pad_stats_rows

    stats = {s: {k: 0.1 * (s + 1) for k in STAT_KEYS} for s in (0, 1, 2)}
    rows = pad_stats_rows("pad", {"PAD": stats})
    by_claim = {c["claim"]: c for c in _claims(rows, stats)}
    spearman = by_claim["the learned σ² grows with the gap (Fig. 2)"]["difference"]
    assert spearman["n"] == 3 and spearman["mean"] == pytest.approx(0.2)
