"""The shared baseline: teacher(s), student from scratch, student with the data-bias paper's KD baseline.

KD baseline ("Rectifying the Data Bias in Knowledge Distillation", Sec. 4.1): ArcFace loss + λ · L2
between the L2-normalised student and teacher embeddings (distill `{loss: l2, weighting: uniform}`;
a linear projection is added when the sizes differ), teacher embeddings read from the teacher's
EmbeddingCache. λ is chosen on the validation split (`facekd.demo.selection`, grid
`settings.grid.kd_lambda`). The other papers' experiments reuse these runs (same configs, same
directories).
"""

from __future__ import annotations

from facekd.config import RunConfig
from facekd.demo.compare import claim, metric_values, rows_of, student_metrics
from facekd.demo.context import DemoContext
from facekd.demo.registry import Experiment, register
from facekd.demo.report import comparison_table, group_table, teacher_note
from facekd.demo.selection import grid_jobs, select, select_if_ready
from facekd.refo.stages import TrainedRun

BIAS_PAPER = "data bias"


def kd_block(lam: float) -> dict:
    """The `distill` block of the KD baseline with λ = lam (every uniform-L2 student uses this form,
    so equal settings give the same run)."""
    return {"loss": "l2", "weighting": "uniform", "lam": float(lam)}


def kd_grid_config(ctx: DemoContext, lam: float, seed: int) -> RunConfig:
    return ctx.student_config(seed, distill=kd_block(lam))


def kd_selection(ctx: DemoContext) -> dict:
    """λ of the KD baseline, chosen on the validation split."""
    return select(ctx, "kd_lambda", ctx.settings.grid.kd_lambda, lambda v, s: kd_grid_config(ctx, v, s), "kd")


def kd_selection_if_ready(ctx: DemoContext) -> dict | None:
    """`kd_selection` when its grid is trained (and the teacher, which every KD run needs), else None."""
    if not ctx.teacher_ready():
        return None
    return select_if_ready(ctx, "kd_lambda", ctx.settings.grid.kd_lambda, lambda v, s: kd_grid_config(ctx, v, s))


def kd_baseline(ctx: DemoContext) -> dict:
    """The `distill` block of the baseline KD with the validation-chosen λ (reused by other experiments)."""
    return kd_block(kd_selection(ctx)["best"])


def scratch_config(ctx: DemoContext, seed: int) -> RunConfig:
    return ctx.student_config(seed)


def kd_config(ctx: DemoContext, seed: int) -> RunConfig:
    return ctx.student_config(seed, distill=kd_baseline(ctx))


def scratch(ctx: DemoContext, seed: int) -> TrainedRun:
    """The student trained from scratch with ArcFace (also ReFO's proxy)."""
    return ctx.train(scratch_config(ctx, seed), f"students/scratch/seed{seed}")


def kd(ctx: DemoContext, seed: int) -> TrainedRun:
    """The student trained with ArcFace + λ·L2 to the cached teacher embeddings."""
    return ctx.train(kd_config(ctx, seed), f"students/kd_l2/seed{seed}")


def prefetch(ctx: DemoContext) -> list[tuple[RunConfig, str]]:
    """Teachers and scratch students first (they need nothing), then the KD grid, then KD."""
    jobs = [(ctx.teacher_config(t), f"teacher/seed{t}") for t in ctx.settings.teacher_seeds]
    jobs += [(scratch_config(ctx, s), f"students/scratch/seed{s}") for s in ctx.seeds]
    if not ctx.teacher_ready():
        return jobs
    jobs += grid_jobs(ctx, "kd_lambda", ctx.settings.grid.kd_lambda, lambda v, s: kd_grid_config(ctx, v, s), "kd")
    sel = kd_selection_if_ready(ctx)
    if sel is not None:
        lam = sel["best"]
        jobs += [(ctx.student_config(s, distill=kd_block(lam)), f"students/kd_l2/seed{s}") for s in ctx.seeds]
    return jobs


def teacher_rows(ctx: DemoContext) -> list[dict]:
    """Rows of table "teacher": every teacher seed on the test pairs."""
    seeds = ctx.settings.teacher_seeds
    runs = ctx.train_many([(ctx.teacher_config(s), f"teacher/seed{s}") for s in seeds])
    return rows_of("teacher", {"teacher": {s: student_metrics(ctx.evaluate(r.model)) for s, r in zip(seeds, runs)}})


def run(ctx: DemoContext) -> dict:
    selection = kd_selection(ctx)
    seeds = ctx.seeds
    jobs = [(scratch_config(ctx, s), f"students/scratch/seed{s}") for s in seeds]
    jobs += [(kd_config(ctx, s), f"students/kd_l2/seed{s}") for s in seeds]
    runs = ctx.train_many(jobs)
    scratch_runs, kd_runs = runs[: len(seeds)], runs[len(seeds) :]
    evals = {
        "scratch": {s: student_metrics(ctx.evaluate(r.model)) for s, r in zip(seeds, scratch_runs)},
        "KD": {s: student_metrics(ctx.evaluate(r.model)) for s, r in zip(seeds, kd_runs)},
    }
    rows = teacher_rows(ctx) + rows_of("spine", evals)
    claims = [
        claim(
            BIAS_PAPER,
            "KD (ArcFace + λ·L2 to the teacher) beats the student trained from scratch (Table 2)",
            metric_values(rows, "spine", "KD", "TAR@1e-03"),
            metric_values(rows, "spine", "scratch", "TAR@1e-03"),
        )
    ]
    s0 = seeds[0]
    roc = ctx.plot_roc(
        {
            "teacher": ctx.teacher().model,
            f"student, scratch (seed {s0})": scratch_runs[0].model,
            f"student + KD (seed {s0})": kd_runs[0].model,
        },
        "roc_spine.png",
        title="SynthFaces test pairs",
    )
    pairs = ctx.split("test")[1]
    return {
        "rows": rows,
        "claims": claims,
        "selections": [selection],
        "roc": roc,
        "pairs": {"genuine": int(pairs.issame.sum()), "impostor": int((~pairs.issame.astype(bool)).sum())},
    }


def methods(ctx: DemoContext, lam: float) -> dict[str, str]:
    s = ctx.settings
    return {
        "scratch": f"student `{s.student.arch}`, from scratch",
        "KD": f"student `{s.student.arch}`, KD (ArcFace + {lam:g}·L2)",
    }


def report(ctx: DemoContext, result: dict) -> str:
    s = ctx.settings
    rows = result["rows"]
    lam = result["selections"][0]["best"]
    teacher = {"teacher": f"teacher `{s.teacher.arch}` (seeds {s.teacher_seeds})"}
    return "\n".join(
        [
            f"Teacher trained with ArcFace (seeds {s.teacher_seeds}; the first teaches every student); students with "
            "ArcFace alone or ArcFace + λ·L2 to the cached teacher embeddings (data-bias paper's baseline KD; λ = "
            f"{lam:g} chosen on the validation split). Mean ± std over student seeds {ctx.seeds}; Δ is the paired "
            f"difference over seeds with its 95 % interval. {result['pairs']['genuine']} genuine / "
            f"{result['pairs']['impostor']} impostor test pairs.",
            "",
            comparison_table(rows, "teacher", teacher),
            "",
            comparison_table(rows, "spine", methods(ctx, lam), baseline="scratch"),
            "",
            teacher_note(rows, {"KD": "KD"}, "spine"),
            "",
            "Per demographic group, TAR at the global FAR=1e-3 threshold:",
            "",
            group_table(rows, "spine", methods(ctx, lam)),
            "",
            f"![ROC]({result['roc']})",
        ]
    )


PLATEAU_FACTORS = (0.5, 1.0, 2.0)


def run_plateau(ctx: DemoContext) -> dict:
    """The teacher (first seed) trained for ½, 1 and 2 × the tier's epochs, scored on the validation
    and test pairs: is the tier's teacher on its validation plateau?"""
    base = ctx.teacher_config()
    epochs = sorted({max(1, round(base.train.epochs * f)) for f in PLATEAU_FACTORS})
    cfgs = [base.model_copy(update={"train": base.train.model_copy(update={"epochs": e})}) for e in epochs]
    runs = ctx.train_many([(c, f"teacher/plateau/{e}_epochs") for c, e in zip(cfgs, epochs)], splits=("val", "test"))
    evals = {}
    for e, run in zip(epochs, runs):
        val, test = (student_metrics(ctx.evaluate(run.model, split)) for split in ("val", "test"))
        evals[f"{e} epochs"] = {0: {f"validation {k}": v for k, v in val.items() if "group" not in k} | test}
    return {"rows": rows_of("teacher_plateau", evals), "epochs": epochs, "tier_epochs": base.train.epochs}


def report_plateau(ctx: DemoContext, result: dict) -> str:
    rows = result["rows"]
    names = {f"{e} epochs": f"teacher, {e} epochs" for e in result["epochs"]}
    cols = ("validation TAR@1e-02", "validation TAR@1e-03", "validation TAR@1e-04", "TAR@1e-03")
    val = {
        e: metric_values(rows, "teacher_plateau", f"{e} epochs", "validation TAR@1e-03")[0] for e in result["epochs"]
    }
    last, tier = max(result["epochs"]), result["tier_epochs"]
    return "\n".join(
        [
            f"The teacher trained for {', '.join(map(str, result['epochs']))} epochs (seed 0): the tier uses {tier}. "
            f"Validation TAR@1e-3 at {tier} epochs is {val[tier]:.4f}, at {last} epochs {val[last]:.4f} "
            f"({val[last] - val[tier]:+.4f}); one seed each, so compare with the teachers' seed spread of the "
            "spine table.",
            "",
            comparison_table(rows, "teacher_plateau", names, columns=cols),
        ]
    )


register(
    Experiment(
        "spine.teacher_plateau",
        tier="full",
        run=run_plateau,
        report=report_plateau,
        title="Teacher: is it trained to its validation plateau?",
        order=1,
    )
)

EXPERIMENT = register(
    Experiment(
        "spine.kd_baseline",
        tier="quick",
        run=run,
        report=report,
        title="Teacher, student from scratch, student with KD",
        order=0,
        prefetch=prefetch,
    )
)
