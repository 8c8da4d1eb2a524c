"""How the demo compares methods: result rows, paired differences over seeds, and paper claims.

Every student table of the demo is stored as rows ``{"table", "method", "seed", "metrics"}`` (one
per trained student and seed; `summary.json` holds them all). Two methods of a table are compared
on the seeds they share: the difference of seed s pairs two students that start from the same
initialisation, so most of the seed-to-seed noise cancels. The 95 % interval of the mean paired
difference is Student's t over those seeds; an interval that covers 0 is "within noise".

A *claim* is one sentence of a paper the demo tests (the method, its baseline, the metric and the
direction the paper reports); its verdict is "reproduces", "opposite" or "within noise".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from scipy.stats import t as student_t

__all__ = [
    "CLAIM_DIRECTIONS",
    "claim",
    "difference_cell",
    "metric_values",
    "paired_difference",
    "rows_of",
    "student_metrics",
]

CONFIDENCE = 0.95
# expected direction of a claim: the method is higher, lower, or not lower ("comparable or better")
CLAIM_DIRECTIONS = ("higher", "lower", "not_lower")


def student_metrics(ev: Mapping, far: float = 1e-3) -> dict[str, float]:
    """The numbers a row keeps from an `evaluate_pairs` dict: TAR@FAR (strict), 10-fold accuracy,
    and each demographic group's TAR at the global threshold of `far`."""
    out = {f"TAR@{t['far']:.0e}": float(t["tar"]) for t in ev["tar_at_far"]}
    out["accuracy"] = float(ev["accuracy"]["mean"])
    for g, stats in ev.get("groups", {}).items():
        for t in stats.get("at_global_threshold", []):
            if math.isclose(t["far"], far):
                out[f"group{g} TAR@{far:.0e}"] = float(t["tar"])
    return out


def rows_of(table: str, results: Mapping[str, Mapping[int, Mapping]]) -> list[dict]:
    """Rows of one table from {method: {seed: metrics dict}}."""
    return [
        {"table": table, "method": method, "seed": int(seed), "metrics": dict(metrics)}
        for method, by_seed in results.items()
        for seed, metrics in by_seed.items()
    ]


def metric_values(rows: Iterable[Mapping], table: str, method: str, metric: str) -> dict[int, float]:
    """{seed: value} of `metric` for `method` in `table`."""
    return {
        int(r["seed"]): float(r["metrics"][metric])
        for r in rows
        if r["table"] == table and r["method"] == method and metric in r["metrics"]
    }


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> dict:
    """Mean of a[s] − b[s] over the seeds s both have, with its Student-t interval.

    Returns {"n", "seeds", "mean", "lo", "hi", "verdict"}; verdict is "higher" / "lower" when the
    interval excludes 0, else "within noise" (always for n < 2: one seed has no spread).
    """
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    out: dict = {"n": len(seeds), "seeds": seeds, "mean": float(d.mean()) if d.size else float("nan")}
    if d.size < 2:
        return out | {"lo": float("nan"), "hi": float("nan"), "verdict": "within noise"}
    half = float(student_t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    lo, hi = out["mean"] - half, out["mean"] + half
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "within noise"
    return out | {"lo": lo, "hi": hi, "verdict": verdict}


def difference_cell(diff: Mapping, digits: int = 4) -> str:
    """'+0.0123 [−0.0040, +0.0286] within noise' for a `paired_difference`."""
    if diff["n"] == 0:
        return "–"
    if diff["n"] < 2:
        return f"{diff['mean']:+.{digits}f} (one seed: no interval)"
    verdict = "within noise" if diff["verdict"] == "within noise" else ""
    cell = f"{diff['mean']:+.{digits}f} [{diff['lo']:+.{digits}f}, {diff['hi']:+.{digits}f}]"
    return f"{cell} {verdict}".strip()


def claim(
    paper: str,
    text: str,
    a: Mapping[int, float],
    b: Mapping[int, float],
    *,
    expected: str = "higher",
    metric: str = "TAR@1e-03",
    note: str = "",
) -> dict:
    """A paper claim tested on paired values a (the method) and b (its baseline).

    verdict: "reproduces" (the interval lies on the paper's side of 0; for "not_lower", the
    interval does not lie below 0), "opposite" (it lies on the other side) or "within noise".
    """
    if expected not in CLAIM_DIRECTIONS:
        raise ValueError(f"expected must be one of {CLAIM_DIRECTIONS}, got {expected!r}")
    diff = paired_difference(a, b)
    if expected == "not_lower":
        verdict = "opposite" if diff["verdict"] == "lower" else "reproduces" if diff["n"] >= 2 else "within noise"
    elif diff["verdict"] == "within noise":
        verdict = "within noise"
    else:
        verdict = "reproduces" if diff["verdict"] == expected else "opposite"
    return {
        "paper": paper,
        "claim": text,
        "metric": metric,
        "expected": expected,
        "difference": diff,
        "verdict": verdict,
        "note": note,
    }
