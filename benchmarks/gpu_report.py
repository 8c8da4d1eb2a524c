"""gpu_check.json and gpu_check.md from the parts benchmarks/gpu_check.sh ran into OUT_DIR.

Training (train.json of benchmarks/gpu_train.py): one table row per (backbone, batch, classes)
with the reference loop's images/s and facekd's with the full and the sharded head (and their
ratios to the reference), and the bar "MobileFaceNet bf16 training at least as fast as the
reference loop". Density (density.json of benchmarks/gpu_density.py), when it ran: its rows as
they are. A part that did not run or did not finish says so; nothing is filled in.

    python benchmarks/gpu_report.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    if not path.is_file():
        return {"status": f"not run ({path.name} missing)"}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return {"status": f"unreadable ({path.name}: {e})"}


def _cell(row: dict | None) -> str:
    if row is None:
        return "–"
    if "images_per_s" not in row:
        return row.get("status", "–")
    ratio = f" ({row['vs_reference']:.2f}×)" if "vs_reference" in row else ""
    mem = f", {row['peak_memory_gb']:.1f} GB" if row.get("peak_memory_gb") is not None else ""
    return f"{row['images_per_s']:.0f}{ratio}{mem}"


def train_table(train: dict) -> tuple[list[str], list[dict]]:
    """(markdown lines, bars) of the training part."""
    rows = train.get("rows")
    if not rows:
        return [f"Training: {train.get('status', 'no rows')}."], []
    keys = sorted({(r["arch"], r["batch"], r["classes"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    done = "" if train.get("complete") else " (did not finish: the rows measured before it stopped)"
    lines = [
        f"Training images/s, {train.get('precision', 'bf16')}, {train.get('device')}, "
        f"torch {train.get('torch')}{done}; "
        "in brackets the ratio to the reference loop and the peak device memory.",
        "",
        "| backbone | batch | classes | " + " | ".join(modes) + " |",
        "|---|---|---|" + "---|" * len(modes),
    ]
    bars = []
    for arch, batch, classes in keys:
        found = {r["mode"]: r for r in rows if (r["arch"], r["batch"], r["classes"]) == (arch, batch, classes)}
        lines.append(f"| {arch} | {batch} | {classes:,} | " + " | ".join(_cell(found.get(m)) for m in modes) + " |")
        full = found.get("full head", {})
        if arch.startswith("mbf") and "vs_reference" in full:
            bars.append({"bar": f"{arch} bf16, batch {batch}, {classes:,} classes: facekd ≥ reference loop",
                         "ratio": full["vs_reference"], "pass": full["vs_reference"] >= 1.0})  # fmt: skip
    return lines, bars


def density_lines(density: dict) -> list[str]:
    rows = density.get("rows")
    if not rows:
        return [f"Density and Extrinsic Sampling: {density.get('status', 'no rows')}."]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]


def main() -> None:
    out = Path(sys.argv[1])
    train, density = _load(out / "train.json"), _load(out / "density.json")
    lines, bars = train_table(train)
    report = {"train": train, "density": density, "bars": bars}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    md = ["# GPU check", "", "## Training", "", *lines, ""]
    md += [f"- {b['bar']}: {b['ratio']:.2f}× — {'pass' if b['pass'] else 'FAIL'}" for b in bars]
    md += ["", "## Exact density and Extrinsic Sampling", "", *density_lines(density), ""]
    (out / "gpu_check.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
