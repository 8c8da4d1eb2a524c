"""Demo experiments of "Rectifying the Data Bias in Knowledge Distillation" on SynthFaces.

default tier: Table 1 (uniformity of the baseline / USI / ES / IS lists, demographic shares,
Fig. 6 grids, Fig. 7 images per identity) and Table 2 (scratch, KD, KD+ES, KD+IS).
full tier: Table 5 (USI, Focal, CB, LDAM), Table 6 (scratch + ES / IS), Fig. 4 (within-identity
angle histograms), Fig. 5 (TAR vs the IS bandwidth h).
Sample lists are regenerated every epoch (seed + epoch) from the teacher's EmbeddingCache; each
student's sampler is part of its run config (`{name, options}`), so students that differ only in
the sampler or its bandwidth are different runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from facekd.bias import bandwidth_rule, epoch_fn, list_weights, uniformity
from facekd.demo.context import DemoContext
from facekd.demo.registry import Experiment, register
from facekd.demo.report import group_table, mean_std, metrics_table
from facekd.demo.spine import kd_baseline

H_IS_DEG = 12  # the paper's Intrinsic Sampling bandwidth h, in degrees
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
        "list's smoothed density over the dataset points / log N (Eq. 4, 9); mean ± std over seeds "
        f"{ctx.seeds}. Paper (MS1MV3): USI +0.032, ES +0.089, IS +0.093.",
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


def _students(ctx: DemoContext, variants: dict[str, dict]) -> dict:
    """Train (or reuse) and evaluate students over the seeds: {name: [evaluate() dict per seed]}.

    A variant is {"key": run label, "sample": sampler name, "h": IS bandwidth in degrees, and any
    keyword of `DemoContext.student_config` (distill, cls_loss, head, head_options)}.
    """
    out: dict[str, list[dict]] = {}
    for name, kw in variants.items():
        out[name] = []
        for seed in ctx.seeds:
            kw2 = dict(kw)
            key, h = kw2.pop("key"), kw2.pop("h", H_IS_DEG)
            if "sample" in kw2:
                kw2["sampler"] = sampler_config(kw2.pop("sample"), h)
            run = ctx.train(ctx.student_config(seed, **kw2), f"students/{key}/seed{seed}")
            out[name].append(ctx.evaluate(run.model))
    return out


def run_table2(ctx: DemoContext) -> dict:
    kd = kd_baseline(ctx)
    return _students(
        ctx,
        {
            "scratch": {"key": "scratch"},
            "KD": {"key": "kd_l2", "distill": kd},
            "KD + ES": {"key": "bias_kd_es", "distill": kd, "sample": "extrinsic"},
            "KD + IS": {"key": "bias_kd_is", "distill": kd, "sample": "intrinsic"},
        },
    )


def run_table5(ctx: DemoContext) -> dict:
    kd = kd_baseline(ctx)
    return _students(
        ctx,
        {
            "KD": {"key": "kd_l2", "distill": kd},
            "KD + USI": {"key": "bias_kd_usi", "distill": kd, "sample": "usi"},
            "KD + Focal": {"key": "bias_kd_focal", "distill": kd, "cls_loss": "focal"},
            "KD + CB": {"key": "bias_kd_cb", "distill": kd, "cls_loss": "cb"},
            "KD + LDAM": {
                "key": "bias_kd_ldam",
                "distill": kd,
                "head": "cosface",
                "head_options": {"m": 0.0},
                "cls_loss": "ldam",
            },
            "KD + ES": {"key": "bias_kd_es", "distill": kd, "sample": "extrinsic"},
            "KD + IS": {"key": "bias_kd_is", "distill": kd, "sample": "intrinsic"},
            "scratch + ES (Table 6)": {"key": "bias_scratch_es", "sample": "extrinsic"},
            "scratch + IS (Table 6)": {"key": "bias_scratch_is", "sample": "intrinsic"},
        },
    )


def run_fig5(ctx: DemoContext) -> dict:
    kd = kd_baseline(ctx)
    degs = (3, 6, 12, 24, 48)
    res = _students(
        ctx,
        {f"KD + IS h={d}°": {"key": f"bias_kd_is_h{d}", "distill": kd, "sample": "intrinsic", "h": d} for d in degs},
    )
    base = _students(ctx, {"KD": {"key": "kd_l2", "distill": kd}})["KD"]
    res["KD"] = base

    def tar(evs: list[dict]) -> float:
        return float(np.mean([t["tar"] for ev in evs for t in ev["tar_at_far"] if math.isclose(t["far"], 1e-3)]))

    def draw(plt):
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.plot(degs, [tar(res[f"KD + IS h={d}°"]) for d in degs], "o-", label="KD + IS")
        ax.axhline(tar(base), ls="--", color="k", label="KD (uniform)")
        ax.set_xscale("log")
        ax.set_xlabel("IS bandwidth h (degrees)")
        ax.set_ylabel("TAR @ FAR=1e-3")
        ax.legend()
        return fig

    return {"students": res, "plot": _plot(ctx, "bias_fig5_bandwidth.png", draw)}


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


def _student_report(intro: str):
    def report(ctx: DemoContext, r: dict) -> str:
        rows = r.get("students", r)
        rows = {k: v for k, v in rows.items() if isinstance(v, list)}
        text = [
            intro.format(seeds=ctx.seeds),
            "",
            metrics_table(rows),
            "",
            "Per demographic group, TAR at the global FAR=1e-3 threshold:",
            "",
            group_table(rows, far=1e-3),
        ]
        if "plot" in r:
            text += ["", f"![plot]({r['plot']})"]
        return "\n".join(text)

    return report


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
            "Students trained with uniform, Extrinsic and Intrinsic (h = 12°) sampling lists regenerated each "
            "epoch; mean ± std over seeds {seeds} (Table 2). Compare the direction with the paper: "
            "KD+IS ≥ KD+ES ≥ KD > scratch."
        ),
        title="Data bias: KD with Extrinsic / Intrinsic Sampling (Table 2)",
        order=31,
    )
)
register(
    Experiment(
        "bias.table5",
        "full",
        run_table5,
        _student_report(
            "Baselines of Table 5 (USI, Focal γ=2, Class-Balanced β=0.9999, LDAM with C_max=0.5 on a margin-free "
            "CosFace head) and Table 6 (ES / IS without distillation); seeds {seeds}."
        ),
        title="Data bias: re-weighting and re-sampling baselines (Tables 5, 6)",
        order=32,
    )
)
register(
    Experiment(
        "bias.fig5",
        "full",
        run_fig5,
        _student_report(
            "TAR vs the Intrinsic Sampling bandwidth h (Fig. 5); the dashed line is KD with uniform sampling; "
            "seeds {seeds}."
        ),
        title="Data bias: IS bandwidth sweep (Fig. 5)",
        order=33,
    )
)
register(
    Experiment(
        "bias.fig4",
        "full",
        run_fig4,
        report_fig4,
        title="Data bias: within-identity angle histograms (Fig. 4)",
        order=34,
    )
)
