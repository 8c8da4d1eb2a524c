"""Demo experiments of "Rectifying the Data Bias in Knowledge Distillation" on SynthFaces.

default tier: Table 1 (uniformity of the baseline / USI / ES / IS lists, demographic shares,
Fig. 6 grids, Fig. 7 images per identity), Table 2 (KD, KD+ES, KD+IS) and Table 6 (scratch + ES /
IS), every student over the tier's seeds with paired differences.
full tier: Table 5 (USI, Focal, CB, LDAM), Fig. 4 (within-identity angle histograms), Fig. 5 (TAR
vs the IS bandwidth h).
Sample lists are regenerated every epoch (seed + epoch) from the teacher's EmbeddingCache; each
student's sampler is part of its run config (`{name, options}`), so students that differ only in
the sampler or its bandwidth are different runs. The IS bandwidth of the students is chosen on the
validation split (grid `settings.grid.is_bandwidth_deg`); the Table 1 lists use the paper's 12°.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from facekd.bias import bandwidth_rule, epoch_fn, list_weights, uniformity
from facekd.config import RunConfig
from facekd.demo.compare import claim, metric_values, rows_of, student_metrics
from facekd.demo.context import DemoContext
from facekd.demo.registry import Experiment, register
from facekd.demo.report import comparison_table, group_table, mean_std, teacher_note
from facekd.demo.selection import grid_jobs, select, select_if_ready
from facekd.demo.spine import BIAS_PAPER, kd_baseline, kd_block, kd_selection_if_ready

H_IS_DEG = 12  # the paper's Intrinsic Sampling bandwidth h, in degrees (Table 1 lists)
H_IS = math.radians(H_IS_DEG)
LISTS = ("uniform", "usi", "extrinsic", "intrinsic")
NAMES = {"uniform": "baseline", "usi": "USI", "extrinsic": "ES", "intrinsic": "IS"}


def sampler_config(method: str, h_deg: float = H_IS_DEG) -> dict:
    """The `sampler` block of a student trained with `method`; the bandwidth h applies to IS only."""
    if method == "intrinsic":
        return {"name": method, "options": {"bandwidth": f"{h_deg:g}deg"}}
    return {"name": method}


def _sampler(ctx: DemoContext, method: str, seed: int, bandwidth: float = H_IS):
    """One sample list per epoch, for the statistics of the lists themselves (Table 1, Fig. 6, 7)."""
    cache = ctx.teacher_cache()
    return epoch_fn(
        method,
        embeddings=np.asarray(cache.embeddings),
        labels=cache.labels,
        seed=seed,
        bandwidth=bandwidth,
        progress=False,
    )


def _plot(ctx: DemoContext, filename: str, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    fig.savefig(ctx.path(filename), dpi=110, bbox_inches="tight")
    plt.close(fig)
    return filename


def _grid(ctx: DemoContext, rows: dict[str, np.ndarray], filename: str) -> str:
    def draw(plt):
        cols = max(len(v) for v in rows.values())
        fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 1.0, len(rows) * 1.2), squeeze=False)
        for r, (title, idx) in enumerate(rows.items()):
            for c in range(cols):
                ax = axes[r][c]
                ax.axis("off")
                if c < len(idx):
                    img = ctx.data.train[int(idx[c])]["image"].permute(1, 2, 0).numpy()
                    ax.imshow(((img + 1) / 2).clip(0, 1))
            axes[r][0].set_title(title, fontsize=8, loc="left")
        return fig

    return _plot(ctx, filename, draw)


def run_lists(ctx: DemoContext) -> dict:
    cache = ctx.teacher_cache()
    x, labels = np.asarray(cache.embeddings), cache.labels
    n = len(labels)
    groups = np.asarray(ctx.data.train.groups)
    bw = bandwidth_rule(x, labels)
    out: dict[str, Any] = {
        "n": n,
        "bandwidth_rule_deg": bw.degrees,
        "bandwidth_skipped": bw.n_skipped,
        "uniformity": {m: [] for m in LISTS},
        "group_share": {},
        "per_identity": {},
    }
    lists: dict[str, np.ndarray] = {}
    for seed in ctx.seeds:
        for m in LISTS:
            s = _sampler(ctx, m, seed)(0)
            lists.setdefault(m, s)
            out["uniformity"][m].append(uniformity(x, H_IS, list_weights(s, n), progress=False).normalized)
    by_seed = {m: dict(zip(ctx.seeds, out["uniformity"][m])) for m in LISTS}
    out["rows"] = rows_of(
        "uniformity", {NAMES[m]: {s: {"uniformity": u} for s, u in v.items()} for m, v in by_seed.items()}
    )
    paper = {"usi": 0.032, "extrinsic": 0.089, "intrinsic": 0.093}
    out["claims"] = [
        claim(
            BIAS_PAPER,
            f"{NAMES[m]} lists are more uniform than the dataset (Table 1: +{d:g})",
            by_seed[m],
            by_seed["uniform"],
            metric="uniformity",
        )
        for m, d in paper.items()
    ]
    n_groups = int(groups.max()) + 1
    for m, s in lists.items():
        out["group_share"][m] = np.bincount(groups[s], minlength=n_groups).astype(float).__truediv__(s.size).tolist()
        out["per_identity"][m] = np.bincount(labels[s], minlength=int(labels.max()) + 1).tolist()
    counts = np.bincount(lists["intrinsic"], minlength=n)
    order = np.argsort(counts, kind="stable")
    out["grid"] = _grid(
        ctx, {"IS: most sampled": order[::-1][:10], "IS: least sampled": order[:10]}, "bias_fig6_grid.png"
    )
    hard = np.asarray(getattr(ctx.data.train, "hard", np.zeros(n, bool)), bool)
    out["hard_share"] = {m: float(hard[s].mean()) for m, s in lists.items()}
    out["fig7"] = _plot(ctx, "bias_fig7_per_identity.png", lambda plt: _fig7(plt, out["per_identity"]))
    return out


def _fig7(plt, per_identity: dict) -> object:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    base = np.array(per_identity["uniform"])
    order = np.argsort(-base)
    for m, v in per_identity.items():
        ax.plot(np.array(v)[order], label=NAMES[m], lw=1)
    ax.set_xlabel("identity (sorted by dataset size)")
    ax.set_ylabel("images in one epoch's list")
    ax.legend()
    return fig


def report_lists(ctx: DemoContext, r: dict) -> str:
    base = np.array(r["uniformity"]["uniform"])
    lines = [
        f"Teacher embeddings of {r['n']} training images; h = 12° (the bandwidth rule, Eq. 5-7, gives "
        f"{r['bandwidth_rule_deg']:.1f}°, {r['bandwidth_skipped']} classes skipped). Uniformity = entropy of the "
        "list's smoothed density over the dataset points / log N (Eq. 4, 9); mean ± std over list seeds "
        f"{ctx.seeds}, Δ paired by seed. Paper (MS1MV3): USI +0.032, ES +0.089, IS +0.093.",
        "",
        "| list | U / log N | Δ vs baseline | share of hard images | group shares |",
        "|---|---|---|---|---|",
    ]
    for m in LISTS:
        u = np.array(r["uniformity"][m])
        shares = " / ".join(f"{v:.3f}" for v in r["group_share"][m])
        lines.append(f"| {NAMES[m]} | {mean_std(u)} | {mean_std(u - base)} | {r['hard_share'][m]:.3f} | {shares} |")
    lines += ["", f"![most and least sampled by IS]({r['grid']})", "", f"![images per identity]({r['fig7']})"]
    return "\n".join(lines)


def is_grid_config(ctx: DemoContext, kd: dict, h: float, seed: int) -> RunConfig:
    """KD (`kd`: its distill block) + Intrinsic Sampling with bandwidth h degrees."""
    return ctx.student_config(seed, distill=kd, sampler=sampler_config("intrinsic", h))


def is_selection(ctx: DemoContext) -> dict:
    """The Intrinsic Sampling bandwidth h (degrees) of KD + IS, chosen on the validation split."""
    kd = kd_baseline(ctx)
    grid = ctx.settings.grid.is_bandwidth_deg
    return select(ctx, "is_bandwidth_deg", grid, lambda h, s: is_grid_config(ctx, kd, h, s), "kd_is")


def _is_grid(ctx: DemoContext, kd: dict) -> tuple[list[tuple[RunConfig, str]], float | None]:
    """The runs of the IS bandwidth grid of KD + IS (`kd`: KD's distill block), and the chosen h
    once they are trained (else None)."""
    grid = ctx.settings.grid.is_bandwidth_deg
    jobs = grid_jobs(ctx, "is_bandwidth_deg", grid, lambda h, s: is_grid_config(ctx, kd, h, s), "kd_is")
    sel = select_if_ready(ctx, "is_bandwidth_deg", grid, lambda h, s: is_grid_config(ctx, kd, h, s))
    return jobs, None if sel is None else sel["best"]


def prefetch_table2(ctx: DemoContext) -> list[tuple[RunConfig, str]]:
    """KD + ES and the IS grid (need the teacher and KD's λ), then KD + IS (needs h)."""
    kd_sel = kd_selection_if_ready(ctx)
    if kd_sel is None:
        return []
    kd = kd_block(kd_sel["best"])
    jobs = [
        (variant_config(ctx, s, {"distill": kd, "sample": "extrinsic"}), f"students/bias_kd_es/seed{s}")
        for s in ctx.seeds
    ]
    grid, h = _is_grid(ctx, kd)
    jobs += grid
    if h is not None:
        jobs += [(is_grid_config(ctx, kd, h, s), f"students/bias_kd_is/seed{s}") for s in ctx.seeds]
    return jobs


def prefetch_table6(ctx: DemoContext) -> list[tuple[RunConfig, str]]:
    """scratch + ES (needs the teacher), the IS grid (needs KD's λ), then scratch + IS (needs h)."""
    if not ctx.teacher_ready():
        return []
    jobs = [(variant_config(ctx, s, {"sample": "extrinsic"}), f"students/bias_scratch_es/seed{s}") for s in ctx.seeds]
    kd_sel = kd_selection_if_ready(ctx)
    if kd_sel is None:
        return jobs
    grid, h = _is_grid(ctx, kd_block(kd_sel["best"]))
    jobs += grid
    if h is not None:
        jobs += [
            (variant_config(ctx, s, {"sample": "intrinsic", "h": h}), f"students/bias_scratch_is/seed{s}")
            for s in ctx.seeds
        ]
    return jobs


def variant_config(ctx: DemoContext, seed: int, variant: dict) -> RunConfig:
    """A student run of `variant`: {"distill": block or None, "sample": sampler name, "h": IS bandwidth
    (degrees), and any keyword of `DemoContext.student_config` (cls_loss, head, head_options)}."""
    kw = dict(variant)
    h = kw.pop("h", H_IS_DEG)
    kw.pop("key", None)
    if "sample" in kw:
        kw["sampler"] = sampler_config(kw.pop("sample"), h)
    return ctx.student_config(seed, **kw)


def train_variants(ctx: DemoContext, variants: dict[str, dict], split: str = "test") -> dict[str, dict[int, dict]]:
    """Train (or reuse) every variant over the tier's seeds, side by side; {name: {seed: metrics}}."""
    jobs = [
        (variant_config(ctx, seed, v), f"students/{v['key']}/seed{seed}")
        for v in variants.values()
        for seed in ctx.seeds
    ]
    runs = iter(ctx.train_many(jobs))
    return {
        name: {seed: student_metrics(ctx.evaluate(next(runs).model, split)) for seed in ctx.seeds} for name in variants
    }


def _kd_variants(ctx: DemoContext, h: float) -> dict[str, dict]:
    kd = kd_baseline(ctx)
    return {
        "KD": {"key": "kd_l2", "distill": kd},
        "KD + ES": {"key": "bias_kd_es", "distill": kd, "sample": "extrinsic"},
        "KD + IS": {"key": "bias_kd_is", "distill": kd, "sample": "intrinsic", "h": h},
    }


def _claim(rows: list[dict], table: str, method: str, baseline: str, text: str, expected: str = "higher") -> dict:
    values = [metric_values(rows, table, m, "TAR@1e-03") for m in (method, baseline)]
    return claim(BIAS_PAPER, text, values[0], values[1], expected=expected)


def run_table2(ctx: DemoContext) -> dict:
    sel = is_selection(ctx)
    rows = rows_of("table2", train_variants(ctx, _kd_variants(ctx, sel["best"])))
    claims = [
        _claim(rows, "table2", "KD + ES", "KD", "KD + Extrinsic Sampling beats KD (Table 2)"),
        _claim(rows, "table2", "KD + IS", "KD", "KD + Intrinsic Sampling beats KD (Table 2)"),
        _claim(
            rows, "table2", "KD + IS", "KD + ES", "KD + IS is at least KD + ES (MobileFaceNet, Table 2)", "not_lower"
        ),
    ]
    return {"rows": rows, "claims": claims, "selections": [sel], "h_deg": sel["best"]}


def run_table6(ctx: DemoContext) -> dict:
    h = is_selection(ctx)["best"]
    variants = {
        "scratch": {"key": "scratch"},
        "scratch + ES": {"key": "bias_scratch_es", "sample": "extrinsic"},
        "scratch + IS": {"key": "bias_scratch_is", "sample": "intrinsic", "h": h},
        "KD": {"key": "kd_l2", "distill": kd_baseline(ctx)},
    }
    rows = rows_of("table6", train_variants(ctx, variants))
    claims = [
        _claim(rows, "table6", "scratch + ES", "scratch", "Extrinsic Sampling helps training from scratch (Table 6)"),
        _claim(rows, "table6", "scratch + IS", "scratch", "Intrinsic Sampling helps training from scratch (Table 6)"),
        _claim(rows, "table6", "scratch + IS", "KD", "scratch + IS is comparable with KD (Table 6)", "not_lower"),
    ]
    return {"rows": rows, "claims": claims, "h_deg": h}


def run_table5(ctx: DemoContext) -> dict:
    h = is_selection(ctx)["best"]
    kd = kd_baseline(ctx)
    variants = {
        **_kd_variants(ctx, h),
        "KD + USI": {"key": "bias_kd_usi", "distill": kd, "sample": "usi"},
        "KD + Focal": {"key": "bias_kd_focal", "distill": kd, "cls_loss": "focal"},
        "KD + CB": {"key": "bias_kd_cb", "distill": kd, "cls_loss": "cb"},
        "KD + LDAM (other head)": {
            "key": "bias_kd_ldam",
            "distill": kd,
            "head": "cosface",
            "head_options": {"m": 0.0},
            "cls_loss": "ldam",
        },
    }
    rows = rows_of("table5", train_variants(ctx, variants))
    claims = [
        _claim(rows, "table5", "KD + CB", "KD", "Class-Balanced loss hurts KD (Table 5)", "lower"),
        _claim(rows, "table5", "KD + IS", "KD + USI", "IS beats uniform sampling on identities (Table 5)"),
        _claim(rows, "table5", "KD + ES", "KD + USI", "ES beats uniform sampling on identities (Table 5)"),
    ]
    return {"rows": rows, "claims": claims, "h_deg": h}


FIG5_DEGREES = (3, 6, 12, 24, 48)


def run_fig5(ctx: DemoContext) -> dict:
    kd = kd_baseline(ctx)
    variants: dict[str, dict] = {"KD": {"key": "kd_l2", "distill": kd}}
    variants |= {
        f"KD + IS h={d}°": {"key": f"bias_kd_is_h{d}", "distill": kd, "sample": "intrinsic", "h": d}
        for d in FIG5_DEGREES
    }
    rows = rows_of("fig5", train_variants(ctx, variants))
    val = rows_of("fig5_val", train_variants(ctx, variants, split="val"))

    def tar(table: str, method: str) -> float:
        return float(np.mean(list(metric_values(rows + val, table, method, "TAR@1e-03").values())))

    def draw(plt):
        fig, ax = plt.subplots(figsize=(4.5, 3))
        for table, style, name in (("fig5", "o-", "test"), ("fig5_val", "s--", "validation")):
            ax.plot(
                FIG5_DEGREES, [tar(table, f"KD + IS h={d}°") for d in FIG5_DEGREES], style, label=f"KD + IS ({name})"
            )
            ax.axhline(tar(table, "KD"), ls=":", color="k" if name == "test" else "grey", label=f"KD ({name})")
        ax.set_xscale("log")
        ax.set_xlabel("IS bandwidth h (degrees)")
        ax.set_ylabel("TAR @ FAR=1e-3")
        ax.legend(fontsize=7)
        return fig

    return {"rows": rows + val, "plot": _plot(ctx, "bias_fig5_bandwidth.png", draw)}


def run_fig4(ctx: DemoContext) -> dict:
    cache = ctx.teacher_cache()
    x, labels = np.asarray(cache.embeddings), cache.labels
    sizes = np.bincount(labels)
    big = int(np.argmax(sizes))
    members = np.flatnonzero(labels == big)
    small = int(np.argsort(sizes)[len(sizes) // 2])
    probes = [int(members[0]), int(members[len(members) // 2]), int(np.flatnonzero(labels == small)[0])]
    hist = {}
    for p in probes:
        same = np.flatnonzero(labels == labels[p])
        same = same[same != p]
        hist[str(p)] = np.degrees(np.arccos(np.clip(x[same] @ x[p], -1, 1))).tolist()

    def draw(plt):
        fig, axes = plt.subplots(1, len(probes), figsize=(3.2 * len(probes), 2.6))
        for ax, p in zip(axes, probes):
            ax.hist(hist[str(p)], bins=20)
            ax.set_title(f"image {p} (identity of {sizes[labels[p]]})", fontsize=8)
            ax.set_xlabel("angle to same-identity images (deg)")
        return fig

    return {
        "probes": probes,
        "plot": _plot(ctx, "bias_fig4_within_identity.png", draw),
        "median_deg": {k: float(np.median(v)) for k, v in hist.items()},
    }


def _student_report(table: str, baseline: str, intro: str, teacher_rows: bool = True):
    def report(ctx: DemoContext, r: dict) -> str:
        rows = r["rows"]
        names = {m: m for m in dict.fromkeys(row["method"] for row in rows if row["table"] == table)}
        text = [
            intro.format(seeds=ctx.seeds, h=r.get("h_deg", H_IS_DEG)),
            "",
            comparison_table(rows, table, names, baseline=baseline),
        ]
        if teacher_rows:
            spine = _spine_rows(ctx)
            students = {m: m for m in names if m != baseline}
            text += ["", teacher_note(spine + rows, students, table)]
        groups = group_table(rows, table, names)
        if groups:
            text += ["", "Per demographic group, TAR at the global FAR=1e-3 threshold:", "", groups]
        if "plot" in r:
            text += ["", f"![plot]({r['plot']})"]
        return "\n".join(text)

    return report


def _spine_rows(ctx: DemoContext) -> list[dict]:
    """The teacher rows of the stored spine result (for the teacher's seed spread), if any."""
    import json

    path = ctx.run_dir / "experiments" / "spine.kd_baseline.json"
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text())["result"]["rows"] if r["table"] == "teacher"]


def report_fig4(ctx: DemoContext, r: dict) -> str:
    med = ", ".join(f"image {k}: {v:.1f}°" for k, v in r["median_deg"].items())
    return f"Median within-identity angle per probe: {med}.\n\n![within-identity angles]({r['plot']})"


register(
    Experiment(
        "bias.lists",
        "default",
        run_lists,
        report_lists,
        title="Data bias: uniformity of sample lists (Table 1, Fig. 6, Fig. 7)",
        order=30,
    )
)
register(
    Experiment(
        "bias.table2",
        "default",
        run_table2,
        _student_report(
            "table2",
            "KD",
            "Students trained with uniform, Extrinsic and Intrinsic (h = {h:g}°, chosen on the validation split) "
            "sampling lists regenerated each epoch; mean ± std over seeds {seeds}, Δ paired by seed (Table 2). "
            "Paper (MobileFaceNet): KD+IS ≥ KD+ES ≥ KD.",
        ),
        title="Data bias: KD with Extrinsic / Intrinsic Sampling (Table 2)",
        order=31,
        prefetch=prefetch_table2,
    )
)
register(
    Experiment(
        "bias.table6",
        "full",
        run_table6,
        _student_report(
            "table6",
            "scratch",
            "Extrinsic and Intrinsic Sampling (h = {h:g}°) without distillation (Table 6; the lists still come from "
            "the teacher's embeddings), with KD for reference; seeds {seeds}. Paper: both help, and scratch + IS is "
            "comparable with KD.",
        ),
        title="Data bias: sampling without distillation (Table 6)",
        order=32,
        prefetch=prefetch_table6,
    )
)
register(
    Experiment(
        "bias.table5",
        "full",
        run_table5,
        _student_report(
            "table5",
            "KD",
            "Baselines of Table 5 (USI, Focal γ=2, Class-Balanced β=0.9999) next to ES / IS; seeds {seeds}. "
            "`KD + LDAM (other head)` is a separate row: LDAM's class-dependent additive cosine margins (C_max = 0.5) "
            "replace the ArcFace head of every other row, so it differs in the head as well as the loss.",
        ),
        title="Data bias: re-weighting and re-sampling baselines (Table 5)",
        order=33,
    )
)
register(
    Experiment(
        "bias.fig5",
        "full",
        run_fig5,
        _student_report(
            "fig5",
            "KD",
            "TAR vs the Intrinsic Sampling bandwidth h (Fig. 5) on the test pairs (the table) and, in the plot, on the "
            "validation pairs too; seeds {seeds}. A sensitivity sweep: the h the other tables use is chosen on "
            "validation only.",
            teacher_rows=False,
        ),
        title="Data bias: IS bandwidth sweep (Fig. 5)",
        order=34,
    )
)
register(
    Experiment(
        "bias.fig4",
        "full",
        run_fig4,
        report_fig4,
        title="Data bias: within-identity angle histograms (Fig. 4)",
        order=35,
    )
)
