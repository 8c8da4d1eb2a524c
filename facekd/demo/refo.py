"""ReFO / ReFO+ experiments on SynthFaces (the supplementary's Tables 1–3 and the intrinsic gap).

Every tailored teacher and feature-only (FO) student comes from the `facekd refo` pipeline
(`facekd.refo.run_refo`) run in the demo's store, so stages shared between pipelines and with the
spine are trained once:
* ReFO's proxy s′ (student architecture, L_cls only: step 1 of Algorithm 1) is the same run as the
  spine's student trained from scratch;
* ReFO+'s proxy (ArcFace + λ·L2 to the original teacher, our reading of ReFO+) is the same run as
  the spine's KD student, which is also the "KD with identity supervision" baseline;
* the β1 / β2 sweeps and the transfer grid reuse every stage their settings do not change.
The distillation data D2 is the SynthFaces training set itself (labels never read by the FO
students). Tailored teachers are one run each (seed 0, on the seed-0 proxy); the FO students are
trained over the demo's seeds and compared with the FO students of the original teacher (the
pipeline's step 5 applied to the original teacher's cache) seed by seed. β1 = 0.5 and β2 = 5 are
the supplementary's defaults (its §4, §5), not tuned here; the full tier sweeps both.
"""

from __future__ import annotations

from facekd.config import RunConfig
from facekd.demo.compare import claim, metric_values, rows_of, student_metrics
from facekd.demo.context import DemoContext
from facekd.demo.registry import Experiment, register
from facekd.demo.report import comparison_table, headline, mean_std
from facekd.demo.spine import kd, kd_baseline, scratch
from facekd.refo import RefoConfig, RefoResult, run_refo, student_config
from facekd.refo.pipeline import proxy_config, reverse_config
from facekd.refo.stages import TrainedRun

REFO_PAPER = "ReFO"

BETA1 = 0.5  # supplementary §4 default for normalised embeddings
BETA2 = 5.0  # supplementary §5 default
TWONN_POINTS = 3000  # the paper's 1 % of MS1MV2 is 58k points; 1 % of SynthFaces would be ~50


def _seeds(ctx: DemoContext) -> list[int]:
    return ctx.seeds


def refo_config(
    ctx: DemoContext,
    variant: str = "refo",
    *,
    proxy_arch: str | None = None,
    student_arch: str | None = None,
    beta1: float = BETA1,
    beta2: float = BETA2,
    seed: int = 0,
) -> RefoConfig:
    """The demo's ReFO pipeline: the tier's teacher and student networks and training, proxy and
    tailored teacher with seed 0, the FO student with `seed`. ReFO+ distils its proxy from the demo
    teacher with the spine's KD λ (chosen on validation)."""
    s, t = ctx.settings.student, ctx.settings.teacher
    student = s.model_copy(update={"arch": student_arch or s.arch})
    proxy = s.model_copy(update={"arch": proxy_arch or s.arch})
    cfg: dict = {
        "variant": variant,
        "teacher": ctx.model_config(t),
        "student": ctx.model_config(student),
        "proxy": ctx.model_config(proxy),
        "beta1": beta1,
        "beta2": beta2,
        "proxy_train": ctx.train_config(proxy, 0),
        "teacher_train": ctx.train_config(t, 0),
        "student_train": ctx.train_config(student, seed),
    }
    if variant == "refo_plus":
        cfg["proxy_lambda"] = kd_baseline(ctx)["lam"]
        cfg["original_teacher"] = ctx.model_config(t)
        cfg["original_checkpoint"] = ctx.teacher().directory / "backbone.pth"
    return RefoConfig.model_validate(cfg)


def pipeline(ctx: DemoContext, cfg: RefoConfig) -> RefoResult:
    """Run (or reuse) the ReFO pipeline `cfg` on the tier's training split, in the demo's store."""
    p = cfg.proxy_model
    name = (
        f"{cfg.variant}_proxy-{p.arch}_student-{cfg.student.arch}_b1-{cfg.beta1_value:g}_b2-{cfg.beta2:g}"
        f"_seed{cfg.student_train.seed}"
    )
    data = ctx.data_config(ctx.settings.student.hflip)
    res = run_refo(cfg, ctx.run_dir / "refo" / name, data, store=ctx.store, progress=ctx.progress, log=ctx.log)
    for stage, record in res.stages.items():
        ctx.label(f"refo/{name}/{stage}", record["dir"])
    return res


def fo_from_original(ctx: DemoContext, seed: int, arch: str | None = None, beta2: float = BETA2) -> TrainedRun:
    """Step 5 alone on the original teacher's cache: the FO student of the untailored teacher."""
    cfg = refo_config(ctx, student_arch=arch, beta2=beta2, seed=seed)
    label = f"students/fo_original/{cfg.student.arch}_b2-{beta2:g}/seed{seed}"
    return ctx.train(student_config(cfg, ctx.data_config(ctx.settings.student.hflip), ctx.teacher_cache()), label)


def twonn(cache) -> dict:
    """TwoNN (supplementary protocol: fixed-seed subset, normalised, 20 × 90 %) of a train-set cache."""
    from facekd.refo.intrinsic import intrinsic_dimension

    res = intrinsic_dimension(cache.embeddings, subset=min(TWONN_POINTS, len(cache)), reps=20, seed=0)
    return {"mean": res.mean, "std": res.std, "n": res.n_per_rep}


# --------------------------------------------------------------------------------------------
# Main comparison: FO students from the original vs tailored teachers, and the intrinsic gap
# --------------------------------------------------------------------------------------------


def fo_students(ctx: DemoContext, variant: str, teacher_cache, arch: str | None = None, beta2: float = BETA2) -> list:
    """(config, label) of the FO student of every seed distilled from `teacher_cache`."""
    data = ctx.data_config(ctx.settings.student.hflip)
    out = []
    for seed in _seeds(ctx):
        cfg = refo_config(ctx, "refo" if variant == "original" else variant, student_arch=arch, beta2=beta2, seed=seed)
        out.append((student_config(cfg, data, teacher_cache), f"students/fo_{variant}/{cfg.student.arch}/seed{seed}"))
    return out


def prefetch(ctx: DemoContext) -> list[tuple[RunConfig, str]]:
    """FO students of the original teacher (need the teacher), ReFO's reverse-distillation teacher
    (needs the proxy, the spine's scratch student of seed 0), then the FO students of the tailored
    teacher: the pipeline's stages as far as they can be named without training."""
    if not ctx.teacher_ready():
        return []
    jobs = fo_students(ctx, "original", ctx.teacher_cache())
    cfg = refo_config(ctx, "refo", seed=_seeds(ctx)[0])
    data = ctx.data_config(ctx.settings.student.hflip)

    def embed(run_cfg: RunConfig):
        model = ctx.store.train(run_cfg).model
        return ctx.store.embed(
            model, ctx.data.train, flip=cfg.flip, normalize=cfg.normalize, batch_size=cfg.embed_batch_size
        )

    proxy = proxy_config(cfg, data)
    if not ctx.ready(proxy):
        return [*jobs, (proxy, "refo/proxy")]
    reverse = reverse_config(cfg, data, embed(proxy))
    if not ctx.ready(reverse):
        return [*jobs, (reverse, "refo/teacher_refo")]
    return jobs + fo_students(ctx, "refo", embed(reverse))


def run_main(ctx: DemoContext) -> dict:
    from facekd.refo.memory import class_centre_memory

    variants = ["refo"] + (["refo_plus"] if ctx.tier == "full" else [])
    tailored = {v: pipeline(ctx, refo_config(ctx, v, seed=_seeds(ctx)[0])) for v in variants}
    caches = {"original": ctx.teacher_cache()} | {v: tailored[v].teacher_cache for v in variants}
    jobs = [job for name, cache in caches.items() for job in fo_students(ctx, name, cache)]
    runs = iter(ctx.train_many(jobs))
    students = {f"FO from {name}": {s: next(runs) for s in _seeds(ctx)} for name in caches}
    teachers = {"original": ctx.teacher().model} | {v: tailored[v].tailored_teacher.model for v in variants}
    evals = {k: {s: student_metrics(ctx.evaluate(r.model)) for s, r in v.items()} for k, v in students.items()}
    if ctx.tier == "full":
        evals["KD with identity (ArcFace + λ·L2)"] = {
            s: student_metrics(ctx.evaluate(kd(ctx, s).model)) for s in _seeds(ctx)
        }
        evals["scratch (ArcFace)"] = {s: student_metrics(ctx.evaluate(scratch(ctx, s).model)) for s in _seeds(ctx)}
    rows = rows_of("refo", evals)
    rows += rows_of("refo_teachers", {name: {0: student_metrics(ctx.evaluate(m))} for name, m in teachers.items()})
    ids = {f"teacher: {name}": twonn(cache) for name, cache in caches.items()}
    ids |= {
        f"FO student from {name}": twonn(
            ctx.store.embed(students[f"FO from {name}"][_seeds(ctx)[0]].model, ctx.data.train)
        )
        for name in caches
    }
    ids["proxy (ReFO, L_cls)"] = twonn(tailored["refo"].proxy_cache)
    claims = [
        claim(
            REFO_PAPER,
            f"FO students of the {name}-tailored teacher beat those of the original teacher",
            metric_values(rows, "refo", f"FO from {name}", "TAR@1e-03"),
            metric_values(rows, "refo", "FO from original", "TAR@1e-03"),
        )
        for name in variants
    ]
    return {
        "rows": rows,
        "claims": claims,
        "id": ids,
        "intrinsic_gap": _intrinsic_gap(ids, variants),
        "memory": class_centre_memory(),
        "memory_demo": class_centre_memory(
            ctx.data.train.num_classes, ctx.settings.student.embedding_size, ctx.settings.student.batch_size
        ),
    }


def _intrinsic_gap(ids: dict, variants: list[str]) -> dict:
    """|ID(teacher) − ID(proxy)| before and after tailoring: did tailoring close the intrinsic gap?"""
    proxy = ids["proxy (ReFO, L_cls)"]["mean"]
    before = abs(ids["teacher: original"]["mean"] - proxy)
    out: dict = {"proxy": proxy, "original_gap": before}
    for v in variants:
        after = abs(ids[f"teacher: {v}"]["mean"] - proxy)
        out[v] = {"gap": after, "closed": after < before}
    return out


def _id_table(ids: dict) -> str:
    lines = ["| model | TwoNN intrinsic dimension |", "|---|---|"]
    lines += [f"| {k} | {v['mean']:.2f} ± {v['std']:.2f} (20 × {v['n']} points) |" for k, v in ids.items()]
    return "\n".join(lines)


def _gap_sentence(gap: dict) -> str:
    parts = []
    for v, g in gap.items():
        if not isinstance(g, dict):
            continue
        verb = "narrowed" if g["closed"] else "did NOT narrow"
        parts.append(f"{v} {verb} it ({gap['original_gap']:.2f} → {g['gap']:.2f})")
    return (
        f"The paper's claim is that tailoring closes the intrinsic gap between teacher and student. Here the proxy's "
        f"intrinsic dimension is {gap['proxy']:.2f} and the original teacher is {gap['original_gap']:.2f} away "
        "from it; "
        + "; ".join(parts)
        + ". One TwoNN estimate per model (20 repetitions on one fixed subset; their std is shown), one teacher run: "
        "differences below a few tenths are within what another training seed could change."
    )


def report_main(ctx: DemoContext, result: dict) -> str:
    from facekd.refo.memory import format_bytes

    m, md = result["memory"], result["memory_demo"]
    s = ctx.settings
    rows = result["rows"]
    teachers = {
        name: f"teacher: {name}" for name in dict.fromkeys(r["method"] for r in rows if r["table"] == "refo_teachers")
    }
    students = {
        name: f"student `{s.student.arch}`, {name}"
        for name in dict.fromkeys(r["method"] for r in rows if r["table"] == "refo")
    }
    return "\n".join(
        [
            f"Feature-only (FO) students (`{s.student.arch}`, {BETA2:g}·L2 on normalised embeddings, no labels, no "
            "class centres) distilled from the original teacher and from teachers tailored by reverse distillation "
            f"(ArcFace + {BETA1:g}·L2 towards the proxy's embeddings). ReFO's proxy is the student trained from "
            "scratch; ReFO+'s (full tier) the KD student. Students: mean ± std over seeds "
            f"{_seeds(ctx)}, Δ paired by seed; teachers are one run each (seed 0).",
            "",
            comparison_table(rows, "refo_teachers", teachers),
            "",
            comparison_table(rows, "refo", students, baseline="FO from original"),
            "",
            "Intrinsic dimension of the training-set embeddings (the intrinsic gap between teacher and student):",
            "",
            _id_table(result["id"]),
            "",
            _gap_sentence(result["intrinsic_gap"]),
            "",
            f"Memory a FO student does not spend on class centres (fp32). MS1MV3 ({m['num_classes']:,} identities × "
            f"{m['embedding_size']}): weights {format_bytes(m['weights'])}; with gradient and SGD momentum "
            f"{format_bytes(m['sgd_momentum'])}; with Adam {format_bytes(m['adam'])}; plus "
            f"{format_bytes(m['logits_per_batch'])} of logits and their gradients per batch of {m['batch_size']}. "
            f"This demo ({md['num_classes']} identities × {md['embedding_size']}): {format_bytes(md['sgd_momentum'])} "
            "with SGD momentum.",
        ]
    )


# --------------------------------------------------------------------------------------------
# Full tier: Table 1 analogue (transfer of tailoring), Tables 2 and 3 analogues (β1, β2 sweeps)
# --------------------------------------------------------------------------------------------

TRANSFER_ARCHS = ("mbf_tiny", "iresnet_mini")
BETA1_SWEEP = (0.1, 0.5, 2.0)
BETA2_SWEEP = (1.0, 5.0, 20.0)


def run_transfer(ctx: DemoContext) -> dict:
    def students(proxy_arch: str | None, arch: str) -> list[dict]:
        if proxy_arch is None:
            runs = [fo_from_original(ctx, seed, arch) for seed in _seeds(ctx)]
        else:
            cfgs = [refo_config(ctx, proxy_arch=proxy_arch, student_arch=arch, seed=seed) for seed in _seeds(ctx)]
            runs = [pipeline(ctx, cfg).student for cfg in cfgs]
        return [ctx.evaluate(r.model) for r in runs]

    teachers = {"original": None} | {f"tailored to {a}": a for a in TRANSFER_ARCHS}
    return {label: {arch: students(proxy, arch) for arch in TRANSFER_ARCHS} for label, proxy in teachers.items()}


def _grid(result: dict, metric: str = "TAR@1e-03") -> str:
    cols = list(next(iter(result.values())).keys())
    lines = ["| teacher | " + " | ".join(f"student `{c}`" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row, cells in result.items():
        lines.append(
            f"| {row} | " + " | ".join(mean_std([headline(ev)[metric] for ev in cells[c]], 3) for c in cols) + " |"
        )
    return "\n".join(lines)


def report_transfer(ctx: DemoContext, result: dict) -> str:
    return "\n".join(
        [
            "Table 1 analogue: FO students of two architectures distilled from the original teacher and from two "
            "teachers tailored (ReFO) to each architecture's proxy. Cells: TAR@FAR=1e-3 (strict), mean ± std over "
            "student seeds; accuracy below.",
            "",
            _grid(result),
            "",
            _grid(result, "accuracy"),
        ]
    )


def run_beta1(ctx: DemoContext) -> dict:
    evals: dict[str, dict[int, dict]] = {}
    for b in BETA1_SWEEP:
        results = [pipeline(ctx, refo_config(ctx, beta1=b, seed=s)) for s in _seeds(ctx)]
        evals[f"β1 = {b:g}: tailored teacher"] = {0: student_metrics(ctx.evaluate(results[0].tailored_teacher.model))}
        evals[f"β1 = {b:g}: FO student"] = {
            s: student_metrics(ctx.evaluate(r.student.model)) for s, r in zip(_seeds(ctx), results)
        }
    return {"rows": rows_of("refo_beta1", evals)}


def run_beta2(ctx: DemoContext) -> dict:
    evals: dict[str, dict[int, dict]] = {}
    for b in BETA2_SWEEP:
        results = [pipeline(ctx, refo_config(ctx, beta2=b, seed=s)) for s in _seeds(ctx)]
        evals[f"β2 = {b:g}: FO student"] = {
            s: student_metrics(ctx.evaluate(r.student.model)) for s, r in zip(_seeds(ctx), results)
        }
    return {"rows": rows_of("refo_beta2", evals)}


def _sweep_report(table: str, what: str):
    def report(ctx: DemoContext, result: dict) -> str:
        rows = result["rows"]
        names = {m: m for m in dict.fromkeys(r["method"] for r in rows if r["table"] == table)}
        return f"{what} Students: mean ± std over seeds {_seeds(ctx)}.\n\n" + comparison_table(rows, table, names)

    return report


register(
    Experiment(
        "refo.main",
        tier="default",
        run=run_main,
        report=report_main,
        order=30,
        prefetch=prefetch,
        title="ReFO: feature-only students from original vs tailored teachers; intrinsic gap",
    )
)
register(
    Experiment(
        "refo.transfer",
        tier="full",
        run=run_transfer,
        report=report_transfer,
        order=31,
        title="ReFO: do tailored teachers transfer across student architectures? (Table 1 analogue)",
    )
)
register(
    Experiment(
        "refo.beta1",
        tier="full",
        run=run_beta1,
        order=32,
        report=_sweep_report("refo_beta1", "Table 2 analogue: β1 of reverse distillation (normalised embeddings)."),
        title="ReFO: β1 sweep",
    )
)
register(
    Experiment(
        "refo.beta2",
        tier="full",
        run=run_beta2,
        order=33,
        report=_sweep_report("refo_beta2", "Table 3 analogue: β2 of feature-only distillation (ReFO teacher)."),
        title="ReFO: β2 sweep",
    )
)
