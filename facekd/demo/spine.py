"""The shared baseline: teacher, student from scratch, student with the data-bias paper's KD baseline.

KD baseline ("Rectifying the Data Bias in Knowledge Distillation", Sec. 4.1): ArcFace loss + λ · L2
between the L2-normalised student and teacher embeddings (distill `{loss: l2, weighting: uniform}`;
a linear projection is added when the sizes differ), teacher embeddings read from the teacher's
EmbeddingCache. The other papers' experiments reuse these runs (same configs, same directories).
"""

from __future__ import annotations

from facekd.demo.context import DemoContext
from facekd.demo.registry import Experiment, register
from facekd.demo.report import group_table, metrics_table
from facekd.refo.stages import TrainedRun


def kd_baseline(ctx: DemoContext) -> dict:
    """The `distill` block of the baseline KD with this demo's λ (reused by other experiments)."""
    return {"loss": "l2", "weighting": "uniform", "lam": ctx.settings.kd_baseline_lambda}


def scratch(ctx: DemoContext, seed: int) -> TrainedRun:
    """The student trained from scratch with ArcFace (also ReFO's proxy)."""
    return ctx.train(ctx.student_config(seed), f"students/scratch/seed{seed}")


def kd(ctx: DemoContext, seed: int) -> TrainedRun:
    """The student trained with ArcFace + λ·L2 to the cached teacher embeddings."""
    return ctx.train(ctx.student_config(seed, distill=kd_baseline(ctx)), f"students/kd_l2/seed{seed}")


def run(ctx: DemoContext) -> dict:
    teacher = ctx.teacher().model
    out: dict = {"teacher": [ctx.evaluate(teacher)], "scratch": [], "kd": []}
    first: dict = {}
    for seed in ctx.seeds:
        s, k = scratch(ctx, seed).model, kd(ctx, seed).model
        out["scratch"].append(ctx.evaluate(s))
        out["kd"].append(ctx.evaluate(k))
        first = first or {"scratch": s, "kd": k}
    s0 = ctx.seeds[0]
    out["roc"] = ctx.plot_roc(
        {
            "teacher": teacher,
            f"student, scratch (seed {s0})": first["scratch"],
            f"student + KD (seed {s0})": first["kd"],
        },
        "roc_spine.png",
        title="SynthFaces test pairs",
    )
    return out


def report(ctx: DemoContext, result: dict) -> str:
    s = ctx.settings
    rows = {
        f"teacher `{s.teacher.arch}`": result["teacher"],
        f"student `{s.student.arch}`, from scratch": result["scratch"],
        f"student `{s.student.arch}`, KD (ArcFace + {s.kd_baseline_lambda:g}·L2)": result["kd"],
    }
    return "\n".join(
        [
            "Teacher trained once with ArcFace; students with ArcFace alone or ArcFace + λ·L2 to the cached "
            "teacher embeddings (data-bias paper's baseline KD). Mean ± std over seeds "
            f"{ctx.seeds}; {result['teacher'][0]['n_genuine']} genuine / "
            f"{result['teacher'][0]['n_impostor']} impostor pairs.",
            "",
            metrics_table(rows),
            "",
            "Per demographic group, TAR at the global FAR=1e-3 threshold:",
            "",
            group_table(rows, far=1e-3),
            "",
            f"![ROC]({result['roc']})",
        ]
    )


EXPERIMENT = register(
    Experiment(
        "spine.kd_baseline",
        tier="quick",
        run=run,
        report=report,
        title="Teacher, student from scratch, student with KD",
        order=0,
    )
)
