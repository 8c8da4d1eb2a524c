"""ReFO / ReFO+ experiments on SynthFaces (the supplementary's Tables 1–3 and the intrinsic gap).

Pieces shared with the spine's experiment (so they are trained once):
* the original teacher (`ctx.teacher()`) and its train-set cache;
* the ReFO proxy s′ is the spine's student trained from scratch with ArcFace (`"scratch"`): it is
  exactly step 1 of Algorithm 1 (student architecture, L_cls only);
* the ReFO+ proxy is the spine's KD student (`"kd_l2"`: ArcFace + λ·L2 to the original teacher),
  our reading of ReFO+ (a proxy distilled from the original teacher); it is also the
  "KD with identity supervision" baseline.
The distillation data D2 is the SynthFaces training set itself (labels never read by the
feature-only students). Tailored teachers are one run each (seed 0, on the seed-0 proxy); the
feature-only students are trained over the demo's seeds (default tier: the first seed only).
"""

from __future__ import annotations

from facekd.demo.core import DemoContext, Experiment, mean_std, metrics_table, register
from facekd.demo.spine import KEY_KD, KEY_SCRATCH, kd_baseline

BETA1 = 0.5  # supplementary §4 default for normalised embeddings
BETA2 = 5.0  # supplementary §5 default
TWONN_POINTS = 3000  # the paper's 1 % of MS1MV2 is 58k points; 1 % of SynthFaces would be ~50


def _seeds(ctx: DemoContext) -> list[int]:
    return ctx.seeds if ctx.tier == "full" else ctx.seeds[:1]


def _train_cache(ctx: DemoContext, model, name: str):
    """Normalised train-set embeddings of `model` (no flip), cached in run_dir/refo/train_emb/name."""
    from facekd.embed import embed_dataset

    return embed_dataset(model, ctx.data.train, ctx.run_dir / "refo" / "train_emb" / name, progress=ctx.progress)


def proxy(ctx: DemoContext, variant: str, arch: str | None = None, seed: int = 0):
    """Step 1: the proxy s′ (ReFO: L_cls from scratch; ReFO+: distilled from the original teacher)."""
    default = arch is None or arch == ctx.settings.student.arch
    if variant == "refo":
        return ctx.train_student(KEY_SCRATCH if default else f"{KEY_SCRATCH}_{arch}", seed, arch=arch)
    if variant == "refo_plus":
        return ctx.train_student(KEY_KD if default else f"{KEY_KD}_{arch}", seed, arch=arch, distill=kd_baseline(ctx))
    raise ValueError(f"unknown ReFO variant {variant!r}; expected 'refo' or 'refo_plus'")


def tailored_teacher(ctx: DemoContext, variant: str = "refo", arch: str | None = None, beta1: float | None = None):
    """Steps 1–4: proxy, its train-set cache, reverse distillation, the tailored teacher's cache.

    Returns (name, tailored teacher, its train-set EmbeddingCache).
    """
    from facekd.models import get_model
    from facekd.models.heads import get_head
    from facekd.refo import make_distiller
    from facekd.tasks import CachedTeacher, FaceTask

    arch = arch or ctx.settings.student.arch
    beta1 = BETA1 if beta1 is None else beta1
    p_name = f"proxy_{variant}_{arch}"
    p_cache = _train_cache(ctx, proxy(ctx, variant, arch, seed=0), p_name)
    net = ctx.settings.teacher
    data = ctx.data.train.with_augmentation({"hflip": True}) if net.hflip else ctx.data.train
    name = f"teacher_{variant}_{arch}_b{beta1:g}"

    def build():
        t_dim = int(p_cache.embeddings.shape[1])
        return FaceTask(
            get_model(net.arch, embedding_size=net.embedding_size, input_size=data.image_size),
            head=get_head("arcface", net.embedding_size, data.num_classes),
            distiller=make_distiller(beta1, net.embedding_size, t_dim),
            teacher=CachedTeacher(p_cache),
        )

    spec = {
        "kind": "refo_tailored_teacher",
        "variant": variant,
        "proxy": p_cache.meta["model_sha256"],
        "beta1": beta1,
        "head": "arcface",
        "emb_loss": "l2",
        "normalize": True,
    }
    teacher = ctx.train_task(f"refo/{name}", build, spec, net, seed=0, dataset=data).student.eval()
    return name, teacher, _train_cache(ctx, teacher, name)


def feature_only(ctx: DemoContext, teacher_name: str, cache, seed: int, arch: str | None = None, beta2: float = BETA2):
    """Step 5: β2 · L2(f_s, f_t) only, no head; returns (eval name, model)."""
    arch_tag = arch or ctx.settings.student.arch
    key = f"refo_fo/{teacher_name}/{arch_tag}_b{beta2:g}"
    model = ctx.train_student(
        key, seed, arch=arch, head=None, distill={"loss": "l2", "weighting": "uniform", "lam": beta2}, teacher=cache
    )
    return f"{key}/seed{seed}", model


def twonn(ctx: DemoContext, cache) -> dict:
    """TwoNN (supplementary protocol: fixed-seed subset, normalised, 20 × 90 %) of a train-set cache."""
    from facekd.intrinsic import intrinsic_dimension

    res = intrinsic_dimension(cache.embeddings, subset=min(TWONN_POINTS, len(cache)), reps=20, seed=0)
    return {"mean": res.mean, "std": res.std, "n": res.n_per_rep}


# --------------------------------------------------------------------------------------------
# Main comparison: FO students from the original vs tailored teachers, and the intrinsic gap
# --------------------------------------------------------------------------------------------


def run_main(ctx: DemoContext) -> dict:
    variants = ["refo"] + (["refo_plus"] if ctx.tier == "full" else [])
    teachers = {"original": ("original", ctx.teacher(), ctx.teacher_cache())}
    for v in variants:
        teachers[v] = tailored_teacher(ctx, v)
    out: dict = {"teachers": {}, "students": {}, "id": {}}
    for label, (tname, model, cache) in teachers.items():
        out["teachers"][label] = [ctx.evaluate(model, "teacher" if label == "original" else f"refo/{tname}")]
        out["id"][f"teacher: {label}"] = twonn(ctx, cache)
        out["students"][f"FO from {label}"] = []
        for seed in _seeds(ctx):
            ev_name, student = feature_only(ctx, tname, cache, seed)
            out["students"][f"FO from {label}"].append(ctx.evaluate(student, ev_name))
            if seed == _seeds(ctx)[0]:
                out["id"][f"FO student from {label}"] = twonn(
                    ctx, _train_cache(ctx, student, ev_name.replace("/", "_"))
                )
    out["id"]["proxy (ReFO, L_cls)"] = twonn(
        ctx, _train_cache(ctx, proxy(ctx, "refo"), f"proxy_refo_{ctx.settings.student.arch}")
    )
    if ctx.tier == "full":
        out["students"]["KD with identity (ArcFace + λ·L2)"] = [
            ctx.evaluate(proxy(ctx, "refo_plus", seed=s), f"{KEY_KD}/seed{s}") for s in _seeds(ctx)
        ]
        out["students"]["scratch (ArcFace)"] = [
            ctx.evaluate(proxy(ctx, "refo", seed=s), f"{KEY_SCRATCH}/seed{s}") for s in _seeds(ctx)
        ]
    from facekd.refo import class_centre_memory

    out["memory"] = class_centre_memory()
    out["memory_demo"] = class_centre_memory(
        ctx.data.train.num_classes, ctx.settings.student.embedding_size, ctx.settings.student.batch_size
    )
    return out


def _id_table(ids: dict) -> str:
    lines = ["| model | TwoNN intrinsic dimension |", "|---|---|"]
    lines += [f"| {k} | {v['mean']:.2f} ± {v['std']:.2f} (20 × {v['n']} points) |" for k, v in ids.items()]
    return "\n".join(lines)


def report_main(ctx: DemoContext, result: dict) -> str:
    from facekd.refo import format_bytes

    m, md = result["memory"], result["memory_demo"]
    s = ctx.settings
    rows = {f"teacher: {k}": v for k, v in result["teachers"].items()}
    rows |= {f"student `{s.student.arch}`, {k}": v for k, v in result["students"].items()}
    return "\n".join(
        [
            f"Feature-only (FO) students (`{s.student.arch}`, {BETA2:g}·L2 on normalised embeddings, no labels, no "
            "class centres) distilled from the original teacher and from teachers tailored by reverse distillation "
            f"(ArcFace + {BETA1:g}·L2 towards the proxy's embeddings). ReFO's proxy is the student trained from "
            "scratch; ReFO+'s (full tier) the KD student. Students: mean ± std over seeds "
            f"{_seeds(ctx)}; teachers are one run each.",
            "",
            metrics_table(rows),
            "",
            "Intrinsic dimension of the training-set embeddings (the intrinsic gap between teacher and student):",
            "",
            _id_table(result["id"]),
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
    teachers = {"original": ("original", ctx.teacher_cache())}
    for arch in TRANSFER_ARCHS:
        name, _, cache = tailored_teacher(ctx, "refo", arch)
        teachers[f"tailored to {arch}"] = (name, cache)
    return {
        label: {
            arch: [
                ctx.evaluate(m, n)
                for n, m in (feature_only(ctx, tname, cache, seed, arch=arch) for seed in _seeds(ctx))
            ]
            for arch in TRANSFER_ARCHS
        }
        for label, (tname, cache) in teachers.items()
    }


def _grid(result: dict, metric: str = "TAR@1e-03") -> str:
    from facekd.demo.core import headline

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
    out = {}
    for b in BETA1_SWEEP:
        name, teacher, cache = tailored_teacher(ctx, "refo", beta1=b)
        out[f"β1 = {b:g}"] = {
            "teacher": [ctx.evaluate(teacher, f"refo/{name}")],
            "student": [ctx.evaluate(m, n) for n, m in (feature_only(ctx, name, cache, s) for s in _seeds(ctx))],
        }
    return out


def run_beta2(ctx: DemoContext) -> dict:
    name, _, cache = tailored_teacher(ctx, "refo")
    return {
        f"β2 = {b:g}": {
            "student": [
                ctx.evaluate(m, n) for n, m in (feature_only(ctx, name, cache, s, beta2=b) for s in _seeds(ctx))
            ]
        }
        for b in BETA2_SWEEP
    }


def _sweep_report(what: str):
    def report(ctx: DemoContext, result: dict) -> str:
        rows = {}
        for k, v in result.items():
            if "teacher" in v:
                rows[f"{k}: tailored teacher"] = v["teacher"]
            rows[f"{k}: FO student"] = v["student"]
        return f"{what} Students: mean ± std over seeds {_seeds(ctx)}.\n\n" + metrics_table(rows)

    return report


register(
    Experiment(
        "refo.main",
        tier="default",
        run=run_main,
        report=report_main,
        order=30,
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
        report=_sweep_report("Table 2 analogue: β1 of reverse distillation (normalised embeddings)."),
        title="ReFO: β1 sweep",
    )
)
register(
    Experiment(
        "refo.beta2",
        tier="full",
        run=run_beta2,
        order=33,
        report=_sweep_report("Table 3 analogue: β2 of feature-only distillation (ReFO teacher)."),
        title="ReFO: β2 sweep",
    )
)
