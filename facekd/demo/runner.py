"""Running a demo tier: each experiment's result is stored under the digest of what it depends on
(the tier's settings and the source of the module that computes it) and reused while that holds;
then report.md and summary.json are written from the stored results.

summary.json (for scripts comparing runs; strict JSON: a number that does not exist is null): the
tier, seeds, wall time and machine load, every table as rows {"experiment", "table", "method",
"seed", "metrics"}, every paper claim with its paired difference and verdict, the hyper-parameters
chosen on the validation split, and PAD's statistics (per PAD seed: log_sigma2_std,
spearman_sigma2_gap, mean σ² by group and by nuisance, ...).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from facekd.demo.context import DemoContext
from facekd.demo.registry import Experiment, experiments_for
from facekd.demo.report import claims_table, selection_table
from facekd.demo.selection import SELECTION_LABEL
from facekd.demo.settings import DemoSettings, tier_settings
from facekd.refo.stages import digest
from facekd.utils import atomic_path, save_json


def result_key(settings: DemoSettings, exp: Experiment) -> str:
    """Digest of the settings that define results and of the source file that defines `exp.run`:
    a stored result is reused only while both are unchanged (its trained runs are reused by their
    own digests anyway)."""
    source = inspect.getsourcefile(exp.run)
    if source is None:
        raise ValueError(f"experiment {exp.name!r}: the source of its run function cannot be found")
    code = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return digest({"settings": settings.results_key(), "code": code})


def _stored(ctx: DemoContext, exp: Experiment) -> bool:
    """True when the experiment's stored result is still valid (it will be reused)."""
    store = ctx.run_dir / "experiments" / f"{exp.name}.json"
    return store.exists() and json.loads(store.read_text()).get("key") == result_key(ctx.settings, exp)


def prefetch(ctx: DemoContext, chosen: list[Experiment]) -> None:
    """Train, side by side, every run the chosen experiments can name before running them: each
    experiment's `prefetch` names the runs buildable now, and is asked again whenever a run finishes
    (`DemoContext.train_as_named`); what is left is trained by the experiments themselves. Each run
    embeds the test split, and the runs of validation grids the validation split too; grid runs and
    the experiments' `gating` runs start first among equally long runs, since they name the runs
    that follow."""
    hooks = [exp.prefetch for exp in chosen if exp.prefetch is not None]
    gating = (SELECTION_LABEL, *(prefix for exp in chosen for prefix in exp.gating))
    if hooks:
        with_val = ("val", "test") if ctx.has_val() else ("test",)
        ctx.train_as_named(
            lambda: [job for hook in hooks for job in hook(ctx)],
            lambda label: with_val if label.startswith(SELECTION_LABEL) else ("test",),
            gates=lambda label: label.startswith(gating),
        )


def _run_or_reuse(ctx: DemoContext, exp: Experiment) -> tuple[dict, float]:
    """(result, wall seconds) of `exp`: the stored one when its key still matches, else computed and stored."""
    store = ctx.run_dir / "experiments" / f"{exp.name}.json"
    key = result_key(ctx.settings, exp)
    if store.exists():
        saved = json.loads(store.read_text())
        if saved.get("key") == key:
            ctx.log(f"{exp.name}: stored result reused")
            return saved["result"], saved["wall_s"]
    ctx.log(f"{exp.name}: running")
    t = time.perf_counter()
    result = exp.run(ctx)
    wall = time.perf_counter() - t
    save_json(store, {"name": exp.name, "key": key, "wall_s": wall, "result": result})
    ctx.log(f"{exp.name}: done in {wall:.1f} s")
    return json.loads(json.dumps(result, default=str)), wall


def run_demo(
    tier: str = "default",
    out: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    settings: DemoSettings | None = None,
) -> Path:
    """Run every experiment of `tier` (reusing stored results, see `result_key`) and write the report.

    out: run directory (default runs/demo/<tier>). Returns the path of report.md.
    """
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    settings = settings or tier_settings(tier, seeds)
    run_dir = Path(out) if out is not None else Path("runs") / "demo" / tier
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(json.loads(settings.model_dump_json()), sort_keys=False))
    ctx = DemoContext(run_dir, settings, progress=progress)
    chosen = experiments_for(settings.tier, only)
    if not chosen:
        raise ValueError(f"no experiment registered for tier {settings.tier!r}")
    prefetch(ctx, [exp for exp in chosen if not _stored(ctx, exp)])
    results = {exp.name: _run_or_reuse(ctx, exp) for exp in chosen}
    wall_total = time.perf_counter() - t0
    machine = {"load_start": list(load_start), "load_end": list(os.getloadavg()), "cpus": os.cpu_count()}
    write_summary(ctx, chosen, results, wall_total, machine)
    report = write_report(ctx, chosen, results, wall_total, machine)
    ctx.log(f"report: {report}  (wall time {wall_total:.1f} s)")
    return report


def _collect(chosen: list[Experiment], results: dict[str, tuple[dict, float]], key: str) -> list[dict]:
    """The `key` entries (rows, claims, selections) of every chosen experiment's result, tagged."""
    out = []
    for exp in chosen:
        for item in results[exp.name][0].get(key, []):
            out.append({"experiment": exp.name, **item})
    return out


def write_summary(
    ctx: DemoContext,
    chosen: list[Experiment],
    results: dict[str, tuple[dict, float]],
    wall_total: float,
    machine: dict,
) -> Path:
    """summary.json: every table as rows, claims, validation choices, PAD statistics (see module doc)."""
    s = ctx.settings
    selections = {sel["name"]: sel for sel in _collect(chosen, results, "selections")}
    summary = {
        "tier": s.tier,
        "seeds": s.seeds,
        "teacher_seeds": s.teacher_seeds,
        "wall_s": wall_total,
        "machine": machine,
        "experiments": {exp.name: {"wall_s": results[exp.name][1]} for exp in chosen},
        "rows": _collect(chosen, results, "rows"),
        "claims": _collect(chosen, results, "claims"),
        "selections": list(selections.values()),
        "pad": {exp.name: results[exp.name][0]["pad"] for exp in chosen if "pad" in results[exp.name][0]},
    }
    path = ctx.run_dir / "summary.json"
    save_json(path, _finite(summary))
    return path


def _finite(obj):
    """`obj` with every NaN / infinite float replaced by None, so that summary.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_report(
    ctx: DemoContext,
    chosen: list[Experiment],
    results: dict[str, tuple[dict, float]],
    wall_total: float,
    machine: dict | None = None,
) -> Path:
    """report.md: header (tier, seeds, wall time, load, config), the paper claims, the validation
    choices, then one section per experiment."""
    s = ctx.settings
    load = ""
    if machine:
        start, end = machine["load_start"][0], machine["load_end"][0]
        load = f" · load average at start / end: {start:.2f} / {end:.2f} on {machine['cpus']} CPUs"
    parts = [
        f"# facekd demo — tier `{s.tier}`",
        "",
        f"Seeds: students {s.seeds}, teachers {s.teacher_seeds} · wall time of this invocation: {wall_total:.1f} s "
        f"(stored results are reused){load} · threads: {torch.get_num_threads()} × {s.workers} processes · "
        "settings: [config.yaml](config.yaml) · every number: [summary.json](summary.json)",
        "",
        f"Data: SynthFaces preset `{s.data_preset}` with overrides {s.data or '{}'}; "
        f"teacher `{s.teacher.arch}` ({s.teacher.epochs} epochs), "
        f"student `{s.student.arch}` ({s.student.epochs} epochs). "
        "TAR@FAR uses the strict convention (FAR ≤ target); accuracy is insightface's 10-fold protocol. "
        "Hyper-parameters are chosen on the validation split (identities disjoint from train and test); the test "
        "pairs only produce the numbers below. Δ: the paired difference over seeds (same seed, same initialisation) "
        'with its 95 % Student-t interval; "within noise" where the interval covers 0.',
    ]
    claims = _collect(chosen, results, "claims")
    if claims:
        parts += ["", "## Paper claims tested", "", claims_table(claims)]
    selections = list({sel["name"]: sel for sel in _collect(chosen, results, "selections")}.values())
    if selections:
        parts += ["", "## Hyper-parameters chosen on the validation split", "", selection_table(selections)]
    for exp in chosen:
        result, wall = results[exp.name]
        parts += [
            "",
            f"## {exp.title or exp.name}",
            "",
            exp.report(ctx, result).strip(),
            "",
            f"_experiment `{exp.name}`, run time {wall:.1f} s_",
        ]
    path = ctx.run_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts) + "\n")
    return path


__all__ = ["result_key", "run_demo", "write_report", "write_summary"]
