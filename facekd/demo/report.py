"""Report helpers shared by every paper's experiments: headline numbers and markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FARS = (1e-2, 1e-3, 1e-4)


def headline(ev: dict) -> dict[str, float]:
    """{"TAR@1e-02": …, "TAR@1e-03": …, "TAR@1e-04": …, "accuracy": …} from an evaluate() dict."""
    out = {f"TAR@{t['far']:.0e}": float(t["tar"]) for t in ev["tar_at_far"]}
    out["accuracy"] = float(ev["accuracy"]["mean"])
    return out


def mean_std(values: Sequence[float] | np.ndarray, digits: int = 4) -> str:
    """'0.8123 ± 0.0100' (population std over seeds; a single value prints alone)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def metrics_table(rows: dict[str, list[dict]], columns: Sequence[str] | None = None) -> str:
    """Markdown table: one row per method, cells mean ± std over its list of evaluate() dicts.

    columns: keys of `headline()` (default: all TAR@FAR and accuracy). A row's header notes n seeds.
    """
    heads = {name: [headline(ev) for ev in evs] for name, evs in rows.items()}
    columns = list(columns or next(iter(heads.values()))[0].keys())
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, hs in heads.items():
        n = f" (n={len(hs)})" if len(hs) > 1 else ""
        lines.append(f"| {name}{n} | " + " | ".join(mean_std([h[c] for h in hs]) for c in columns) + " |")
    return "\n".join(lines)


def group_table(rows: dict[str, list[dict]], far: float = 1e-3) -> str:
    """Markdown table of per-demographic-group TAR at the global strict threshold for `far`."""
    groups = sorted({g for evs in rows.values() for ev in evs for g in ev.get("groups", {})}, key=int)
    lines = ["| method | " + " | ".join(f"group {g}" for g in groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for name, evs in rows.items():
        cells = []
        for g in groups:
            vals = [
                t["tar"]
                for ev in evs
                for t in ev["groups"].get(g, {}).get("at_global_threshold", [])
                if math.isclose(t["far"], far)
            ]
            cells.append(mean_std(vals, 3))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["FARS", "group_table", "headline", "mean_std", "metrics_table"]
