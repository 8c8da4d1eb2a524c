"""Issue-2 experiment: teacher, student from scratch, student with the data-bias paper's KD baseline.

KD baseline (data-bias paper, Sec. 4.1): ArcFace loss + λ · L2 between the L2-normalised student
and teacher embeddings (`Distiller("l2", "uniform", lam=λ)`; a linear projection is added when the
sizes differ), teacher embeddings read from the teacher's EmbeddingCache.
"""

from __future__ import annotations

from facekd.demo.core import DemoContext, Experiment, group_table, metrics_table, register

KEY_SCRATCH = "scratch"
KEY_KD = "kd_l2"


def kd_baseline(ctx: DemoContext) -> dict:
    """The `distill` spec of the baseline KD with this demo's λ (reused by other experiments)."""
    return {"loss": "l2", "weighting": "uniform", "lam": ctx.settings.kd_baseline_lambda}


def run(ctx: DemoContext) -> dict:
    teacher = ctx.teacher()
    out = {"teacher": [ctx.evaluate(teacher, "teacher")], "scratch": [], "kd": []}
    for seed in ctx.seeds:
        scratch = ctx.train_student(KEY_SCRATCH, seed)
        out["scratch"].append(ctx.evaluate(scratch, f"{KEY_SCRATCH}/seed{seed}"))
        kd = ctx.train_student(KEY_KD, seed, distill=kd_baseline(ctx))
        out["kd"].append(ctx.evaluate(kd, f"{KEY_KD}/seed{seed}"))
    s0 = ctx.seeds[0]
    out["roc"] = ctx.plot_roc(
        {
            "teacher": "teacher",
            f"student, scratch (seed {s0})": f"{KEY_SCRATCH}/seed{s0}",
            f"student + KD (seed {s0})": f"{KEY_KD}/seed{s0}",
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
            f"{ctx.seeds}; {result['teacher'][0]['n_genuine']} genuine / {result['teacher'][0]['n_impostor']} impostor pairs.",
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
