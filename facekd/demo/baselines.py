"""The face-specific distillation baselines next to KD, KD + IS and PAD (full tier), same budgets.

EKD ("Evaluation-oriented Knowledge Distillation for Deep Face Recognition", arXiv 2206.02325),
GKD ("Grouped Knowledge Distillation for Deep Face Recognition", arXiv 2304.04462), AdaDistill
("AdaDistill: Adaptive Knowledge Distillation for Deep Face Recognition", arXiv 2407.01332) and
MarginDistillation ("MarginDistillation: distillation for margin-based softmax", arXiv 2003.02586),
from the loss registry (docs/distillation.md). Every student is the tier's student network with the
tier's epochs, batch and seeds. EKD and GKD add their loss to ArcFace with λ chosen on the
validation split (GKD reads the online teacher's ArcFace logits); AdaDistill and
MarginDistillation replace the margin head (their loss is the classification loss, λ = 1 as their
papers), MarginDistillation with the teacher's class centres from its `head.pth`.
"""

from __future__ import annotations

from facekd.demo.bias import is_selection, sampler_config
from facekd.demo.compare import claim, metric_values, rows_of, student_metrics
from facekd.demo.context import DemoContext
from facekd.demo.pad import pad_block, pad_selection
from facekd.demo.registry import Experiment, register
from facekd.demo.report import comparison_table, group_table
from facekd.demo.selection import select
from facekd.demo.spine import kd_baseline

EKD_LAMBDAS = (1.0, 10.0)
GKD_LAMBDAS = (0.5, 2.0)
PAPERS = {
    "EKD": "EKD (arXiv 2206.02325)",
    "GKD": "GKD (arXiv 2304.04462)",
    "AdaDistill": "AdaDistill (arXiv 2407.01332)",
    "MarginDistillation": "MarginDistillation (arXiv 2003.02586)",
}


def _variants(ctx: DemoContext) -> tuple[dict[str, dict], list[dict]]:
    """{method: student_config keywords} and the validation selections they used."""
    kd = kd_baseline(ctx)
    ekd = select(
        ctx, "ekd_lambda", EKD_LAMBDAS, lambda v, s: ctx.student_config(s, distill={"loss": "ekd", "lam": v}), "ekd"
    )
    gkd = select(
        ctx,
        "gkd_lambda",
        GKD_LAMBDAS,
        lambda v, s: ctx.student_config(s, distill={"loss": "gkd", "lam": v}, teacher="online_logits"),
        "gkd",
    )
    centres = str(ctx.teacher().directory / "head.pth")
    variants: dict[str, dict] = {
        "KD": {"distill": kd},
        "KD + IS": {"distill": kd, "sampler": sampler_config("intrinsic", is_selection(ctx)["best"])},
        "PAD": {"distill": pad_block(pad_selection(ctx)["best"])},
        "EKD": {"distill": {"loss": "ekd", "lam": ekd["best"]}},
        "GKD": {"distill": {"loss": "gkd", "lam": gkd["best"]}, "teacher": "online_logits"},
        "AdaDistill": {"head": None, "distill": {"loss": "adadistill", "lam": 1.0}},
        "MarginDistillation": {
            "head": None,
            "distill": {"loss": "margin_distillation", "lam": 1.0, "options": {"class_centres": centres}},
        },
    }
    return variants, [ekd, gkd]


def run_baselines(ctx: DemoContext) -> dict:
    variants, selections = _variants(ctx)
    jobs = [
        (ctx.student_config(s, **kw), f"students/baseline_{name}/seed{s}")
        for name, kw in variants.items()
        for s in ctx.seeds
    ]
    runs = iter(ctx.train_many(jobs))
    evals = {name: {s: student_metrics(ctx.evaluate(next(runs).model)) for s in ctx.seeds} for name in variants}
    rows = rows_of("baselines", evals)
    claims = [
        claim(
            PAPERS[name],
            f"{name} beats the L2 KD baseline",
            metric_values(rows, "baselines", name, "TAR@1e-03"),
            metric_values(rows, "baselines", "KD", "TAR@1e-03"),
        )
        for name in PAPERS
    ]
    return {"rows": rows, "claims": claims, "selections": selections}


def report_baselines(ctx: DemoContext, r: dict) -> str:
    rows = r["rows"]
    names = {m: m for m in dict.fromkeys(row["method"] for row in rows if row["table"] == "baselines")}
    return "\n".join(
        [
            "Face-specific distillation baselines on the same student, data, epochs, batch and seeds as KD, KD + IS "
            f"and PAD (seeds {ctx.seeds}; Δ paired by seed). EKD and GKD: ArcFace + λ·loss, λ chosen on validation; "
            "AdaDistill and MarginDistillation replace the ArcFace head.",
            "",
            comparison_table(rows, "baselines", names, baseline="KD"),
            "",
            "Per demographic group, TAR at the global FAR=1e-3 threshold:",
            "",
            group_table(rows, "baselines", names),
        ]
    )


register(
    Experiment(
        "baselines.face",
        tier="full",
        run=run_baselines,
        report=report_baselines,
        title="Face-specific baselines (EKD, GKD, AdaDistill, MarginDistillation) next to KD, KD + IS and PAD",
        order=60,
    )
)

__all__ = ["run_baselines"]
