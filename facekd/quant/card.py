"""The model card (`card.md`) written next to every exported student.

It says what the network is (architecture, input, embedding, parameters, FLOPs counted by
`torch.utils.flop_counter.FlopCounterMode`), what each file costs (size, CPU latency at batch 1 and
32 with one onnxruntime thread), what it achieves (TAR@FAR of every model on the same pairs,
fp32 and int8 side by side, per demographic group where the set has groups), which MFR checks
pass (and which do not apply to int8), and where it comes from (teacher, data, the training
settings and the exact command). The numbers are a `facekd.quant.measure.compare` report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facekd.utils import atomic_path

__all__ = ["CardInfo", "count_flops", "render_card", "tar_tables", "training_provenance", "write_card"]


@dataclass
class CardInfo:
    """What a card is made of. `model`: the PyTorch student (None when only an ONNX file is
    known: FLOPs are then counted on the graph); `report`: a `compare` report; `primary`: the name
    in the report of the file the card is about; `command`: the command that produced it;
    `provenance`: teacher / data / training settings (defaults to `report["training"]`)."""

    model: nn.Module | None
    arch: str | None
    report: dict[str, Any]
    primary: str
    command: str
    provenance: dict[str, Any] = field(default_factory=dict)


def count_flops(model: nn.Module, input_size: tuple[int, int]) -> int:
    """FLOPs (2 per multiply-accumulate) of one forward of a single image, by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was)
    return int(counter.get_total_flops())


def training_provenance(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Teacher, data and settings recorded next to a checkpoint: a `facekd train` run's
    config.yaml, or a demo run's spec.json (its teacher resolved to the demo's teacher run);
    {} when neither is there."""
    import yaml

    path = Path(checkpoint)
    run = path if path.is_dir() else path.parent
    if (run / "config.yaml").is_file():
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        keys = ("teacher", "data", "distill", "sampler", "model", "train")
        return {"run": str(run), **{k: cfg[k] for k in keys if k in cfg}}
    if (run / "spec.json").is_file():
        spec = json.loads((run / "spec.json").read_text())
        out = {"run": str(run), **{k: spec[k] for k in ("teacher", "dataset", "distill", "net") if k in spec}}
        teacher = run.parents[2] / "teacher" if len(run.parents) > 2 else None  # demo: students/<key>/seed<k>
        if isinstance(spec.get("teacher"), str) and teacher is not None and (teacher / "spec.json").is_file():
            net = json.loads((teacher / "spec.json").read_text()).get("net", {})
            out["teacher"] = {"demo teacher": spec["teacher"], "checkpoint": str(teacher / "backbone.pth"), **net}
        return out
    return {}


def _fmt_far(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")


def tar_tables(report: dict[str, Any], group_far: float = 1e-3) -> str:
    """Markdown: per evaluation set, TAR@FAR (strict) of every model with the change against the
    baseline, and, where the set has groups, TAR per group at the global FAR=`group_far` threshold."""
    models, base = report["models"], report["baseline"]
    sets = list(next(iter(models.values()))["eval"])
    if not sets:
        return "_not evaluated: give evaluation pairs (SynthFaces, a .bin set or IJB)._\n"
    lines = []
    for s in sets:
        first = models[base]["eval"][s]
        fars = [t["far"] for t in first["tar_at_far"]]
        n = f"{first.get('n_genuine', '?')} genuine / {first.get('n_impostor', '?')} impostor pairs"
        lines += [f"**{s}** ({n}; strict TAR@FAR, FAR ≤ target)", ""]
        head = " | ".join(f"TAR@{_fmt_far(f)}" for f in fars)
        lines += [f"| model | {head} | Δ TAR@{_fmt_far(group_far)} vs {base} |", "|---" * (len(fars) + 2) + "|"]
        base_tar = {t["far"]: t["tar"] for t in first["tar_at_far"]}
        for name, m in models.items():
            tars = {t["far"]: t["tar"] for t in m["eval"][s]["tar_at_far"]}
            delta = tars.get(group_far, float("nan")) - base_tar.get(group_far, float("nan"))
            lines.append(f"| {name} | " + " | ".join(f"{tars[f]:.4f}" for f in fars) + f" | {delta:+.4f} |")
        lines.append("")
        if "groups" in first:
            lines += _group_table(models, s, group_far)
    return "\n".join(lines)


def _group_table(models: dict[str, Any], s: str, far: float) -> list[str]:
    groups = sorted(next(iter(models.values()))["eval"][s]["groups"], key=int)
    lines = [f"TAR per group at the global FAR={_fmt_far(far)} threshold:", ""]
    lines += ["| model | " + " | ".join(f"group {g}" for g in groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for name, m in models.items():
        cells = []
        for g in groups:
            at = {t["far"]: t["tar"] for t in m["eval"][s]["groups"][g].get("at_global_threshold", [])}
            cells.append(f"{at[far]:.4f}" if far in at else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _files_table(report: dict[str, Any]) -> list[str]:
    base = report["baseline"]
    threads = report.get("latency_threads", 1)
    lines = [
        f"| model | file | size (KiB) | size / {base} | batch 1 (ms) | batch 32 (ms / image) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        lat = m["latency"]
        lines.append(
            f"| {name} | `{Path(m['path']).name}` | {m['size_bytes'] / 1024:.1f} | {m['size_ratio']:.3f} | "
            f"{lat['1']['ms']:.3f} | {lat['32']['ms_per_image']:.4f} |"
        )
    cpu = platform.processor() or platform.machine()
    lines += ["", f"Latency: onnxruntime on the CPU ({cpu}), {threads} thread(s), median of the runs, models", ""]
    lines[-2] += " run interleaved (their ratio is what carries over to another machine)."
    return lines


def _checks_table(report: dict[str, Any]) -> list[str]:
    models = report["models"]
    names = list(models)
    rows: dict[str, list[str]] = {}
    notes = {}
    for i, name in enumerate(names):
        for c in models[name]["checks"]["checks"]:
            cells = rows.setdefault(c["name"], ["—"] * len(names))
            cells[i] = "n/a" if not c["applies"] else ("ok" if c["passed"] else "FAIL")
            if c["why"]:
                notes[c["name"]] = c["why"]
    lines = ["| check | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {check} | " + " | ".join(cells) + " |" for check, cells in rows.items()]
    lines += ["", *[f"- n/a, {check}: {why}." for check, why in notes.items()], ""]
    return lines


def _model_section(info: CardInfo) -> list[str]:
    from facekd.onnx import estimate_flops

    primary = info.report["models"][info.primary]
    base = info.report["models"][info.report["baseline"]]
    check_info = base["checks"]["info"]
    mean, std = check_info.get("input_mean", 127.5), check_info.get("input_std", 127.5)
    if info.model is not None:
        from facekd.evaluate.model_eval import model_image_size

        side = model_image_size(info.model)
        size = (side, side)
        params = f"{sum(p.numel() for p in info.model.parameters()) / 1e6:.3f} M"
        flops = f"{count_flops(info.model, size) / 1e6:.2f} M (torch.utils.flop_counter, one image)"
    else:
        import onnx

        proto = onnx.load(base["path"])
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        size = (dims[2].dim_value, dims[3].dim_value)
        params = f"{sum(int(torch.tensor(i.dims).prod()) for i in proto.graph.initializer) / 1e6:.3f} M (fp32 graph)"
        flops = f"{estimate_flops(proto, (1, 3, *size)) / 1e6:.2f} M (Conv/Gemm/MatMul of the fp32 graph)"
    return [
        "| | |",
        "|---|---|",
        f"| architecture | `{info.arch or 'unknown'}` |",
        f"| file | `{Path(primary['path']).name}` ({info.primary}) |",
        f"| input | `data`: float32 (batch, 3, {size[0]}, {size[1]}) RGB, (pixel − {mean}) / {std}; dynamic batch |",
        f"| output | `embedding`: ({check_info.get('feature_dim', '?')}-d, raw; L2-normalise before comparing) |",
        f"| parameters | {params} |",
        f"| FLOPs | {flops} |",
        "",
    ]


def _provenance(info: CardInfo) -> list[str]:
    import onnxruntime

    prov = info.provenance or info.report.get("training", {})
    lines = [f"- {key}: `{json.dumps(value, default=str)}`" for key, value in prov.items()]
    if not prov:
        lines.append("- teacher and data: not recorded next to the checkpoint")
    if "quantize" in info.report:
        lines.append(f"- quantization: `{json.dumps(info.report['quantize'])}`")
    lines += [
        f"- command: `{info.command}`",
        f"- made {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
        "",
    ]
    return lines


def render_card(info: CardInfo) -> str:
    """The card as markdown."""
    title = f"# Model card: `{info.arch or 'student'}`, {info.primary}"
    return "\n".join(
        [
            title,
            "",
            "## Model",
            "",
            *_model_section(info),
            "## Files, size and CPU latency",
            "",
            *_files_table(info.report),
            "## Verification",
            "",
            tar_tables(info.report),
            "## MFR submission checks",
            "",
            *_checks_table(info.report),
            "## Provenance",
            "",
            *_provenance(info),
        ]
    )


def write_card(path: str | os.PathLike, info: CardInfo) -> Path:
    """Write `render_card(info)` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(render_card(info))
    return Path(path)
