"""Report helpers shared by every paper's experiments: headline numbers, markdown tables of result
rows with paired differences, claims."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from facekd.demo.compare import difference_cell, metric_values, paired_difference

FARS = (1e-2, 1e-3, 1e-4)
HEADLINE = ("TAR@1e-02", "TAR@1e-03", "TAR@1e-04", "accuracy")
METRIC = "TAR@1e-03"


def headline(ev: dict) -> dict[str, float]:
    """{"TAR@1e-02": …, "TAR@1e-03": …, "TAR@1e-04": …, "accuracy": …} from an evaluate() dict."""
    out = {f"TAR@{t['far']:.0e}": float(t["tar"]) for t in ev["tar_at_far"]}
    out["accuracy"] = float(ev["accuracy"]["mean"])
    return out


def mean_std(values: Sequence[float] | np.ndarray, digits: int = 4) -> str:
    """'0.8123 ± 0.0100' (sample std over seeds, ddof=1; a single value prints alone)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def comparison_table(
    rows: Iterable[Mapping],
    table: str,
    methods: Mapping[str, str],
    baseline: str | None = None,
    columns: Sequence[str] = HEADLINE,
    metric: str = METRIC,
) -> str:
    """Markdown table of `methods` ({method: label}) of `table`: mean ± std over seeds of each column,
    and the paired difference in `metric` from `baseline` with its 95 % interval."""
    rows = list(rows)
    head = ["method", "n", *columns] + (
        [f"Δ {metric} vs {methods.get(baseline, baseline)} [95 % CI]"] if baseline else []
    )
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for method, label in methods.items():
        values = {c: metric_values(rows, table, method, c) for c in columns}
        n = max((len(v) for v in values.values()), default=0)
        cells = [label, str(n), *(mean_std(list(values[c].values())) for c in columns)]
        if baseline:
            same = method == baseline
            diff = paired_difference(
                metric_values(rows, table, method, metric), metric_values(rows, table, baseline, metric)
            )
            cells.append("(baseline)" if same else difference_cell(diff))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_columns(rows: Iterable[Mapping], table: str) -> list[str]:
    """The per-group metric names present in `table`'s rows, in group order."""
    keys = {k for r in rows if r["table"] == table for k in r["metrics"] if k.startswith("group")}
    return sorted(keys, key=lambda k: int(k[len("group") :].split()[0]))


def group_table(rows: Iterable[Mapping], table: str, methods: Mapping[str, str]) -> str:
    """Markdown table of each demographic group's TAR at the global FAR=1e-3 threshold."""
    rows = list(rows)
    cols = group_columns(rows, table)
    if not cols:
        return ""
    lines = ["| method | " + " | ".join(c.split()[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, label in methods.items():
        cells = [mean_std(list(metric_values(rows, table, method, c).values()), 3) for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def teacher_note(rows: Iterable[Mapping], students: Mapping[str, str], table: str, metric: str = METRIC) -> str:
    """How each student's mean compares with the teachers' spread over teacher seeds (table "teacher")."""
    rows = list(rows)
    teacher = np.array(list(metric_values(rows, "teacher", "teacher", metric).values()))
    if teacher.size == 0:
        return ""
    if teacher.size == 1:
        spread = (
            f"one teacher seed ({teacher[0]:.4f}): its seed spread is not measured in this tier (`--full` trains 3)"
        )
    else:
        spread = (
            f"{teacher.size} teacher seeds: {teacher.mean():.4f} ± {teacher.std(ddof=1):.4f}, "
            f"range [{teacher.min():.4f}, {teacher.max():.4f}]"
        )
    parts = []
    for method, label in students.items():
        mean = np.mean(list(metric_values(rows, table, method, metric).values()))
        where = "above" if mean > teacher.max() else "below" if mean < teacher.min() else "inside"
        parts.append(f"{label} {mean:.4f} ({where} the teachers' range)")
    return f"Teacher {metric}: {spread}. Students: " + "; ".join(parts) + "."


def claims_table(claims: Iterable[Mapping]) -> str:
    """Markdown table: paper, claim, measured paired difference with its interval, verdict."""
    lines = ["| paper | claim | metric | measured (paired Δ, 95 % CI) | reproduces? |", "|---|---|---|---|---|"]
    for c in claims:
        verdict = {"reproduces": "yes", "opposite": "no (opposite)", "within noise": "within noise"}[c["verdict"]]
        note = f" ({c['note']})" if c.get("note") else ""
        lines.append(
            f"| {c['paper']} | {c['claim']}{note} | {c['metric']} | {difference_cell(c['difference'])} | {verdict} |"
        )
    return "\n".join(lines)


def selection_table(selections: Iterable[Mapping]) -> str:
    """Markdown table of the validation-split grids: values, scores and the chosen value."""
    lines = ["| hyper-parameter | grid | validation score per value | chosen |", "|---|---|---|---|"]
    for s in selections:
        grid = ", ".join(f"{v:g}" for v in s["values"])
        scores = ", ".join(f"{k}: {v:.4f}" for k, v in s.get("mean", {}).items())
        scores = s.get("note") or scores or "(one value: not searched)"
        lines.append(f"| {s['name']} | {grid} | {scores} | {s['best']:g} |")
    return "\n".join(lines)


__all__ = [
    "FARS",
    "HEADLINE",
    "METRIC",
    "claims_table",
    "comparison_table",
    "group_table",
    "headline",
    "mean_std",
    "selection_table",
    "teacher_note",
]
