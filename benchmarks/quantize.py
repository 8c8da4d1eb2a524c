"""INT8 deployment of the default demo's student: file size, TAR drop of post-training quantization
(three calibrators, per-channel and per-tensor weights) and of quantization-aware distillation,
and CPU latency at batch 1 and 32 with one onnxruntime thread.

Inputs are the default demo's run directory (`facekd demo`, default `runs/demo/default`): the KD
student `students/kd_l2/seed<k>/backbone.pth` (mbf_tiny, ArcFace + 20·L2), the teacher
`teacher/backbone.pth` (iresnet_tiny) and the SynthFaces arrays in `data/`. Missing ones are made
by running `facekd demo --only spine --seeds N --out <demo dir>` first (about 20 min on 2 cores).

For every student seed: the fp32 export; PTQ with MinMax, Entropy and Percentile and with
per-tensor MinMax weights, each calibrated on the same 512 training images; and for every QAT
seed, quantization-aware distillation (`facekd.quant.qat.run_qat`: 2 epochs at lr 0.01, L2 to the
online fp32 teacher, λ 1, chosen before any measurement and not tuned; BatchNorm statistics frozen),
quantized with MinMax ranges calibrated on the same images ("int8 QAT", the deliverable) and, for
comparison, with the activation ranges its quantizers learned ("int8 QAT, learned ranges"); these
two settings were chosen on validation pairs, see docs/quantization.md. TAR@FAR (strict) is measured on the
SynthFaces test pairs (5000 genuine / 100000 impostor); each difference of TAR@1e-3 to fp32 comes
with a 95 % paired bootstrap interval (pairs resampled within genuine and impostor, both models
scored on the same resample, 1000 resamples). Bars: INT8 file ≤ 0.35× the fp32 file; QAT's TAR@1e-3 within 0.01 of fp32
(drop ≤ 0.01, every run).

    .venv/bin/python benchmarks/quantize.py                                  # demo in runs/demo/default
    .venv/bin/python benchmarks/quantize.py --demo-dir DIR --student-seeds 0 --qat-seeds 0 1 2
    .venv/bin/python benchmarks/quantize.py --validate --student-seeds 0 --qat-seeds 0 1   # QAT defaults
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekd.evaluate.verification import tar_at_far
from facekd.models.checkpoint import load_backbone
from facekd.onnx import OnnxTeacher, export_onnx
from facekd.quant.calibration import DatasetCalibrationReader, load_dataset
from facekd.quant.measure import EvalSets, compare, embed_images, synthfaces_test
from facekd.quant.ptq import quantize_onnx
from facekd.quant.qat import QATConfig, run_qat
from facekd.utils import save_json

FAR = 1e-3
PTQ = {  # name: (calibrator, per-channel weights)
    "int8 PTQ minmax": ("minmax", True),
    "int8 PTQ entropy": ("entropy", True),
    "int8 PTQ percentile": ("percentile", True),
    "int8 PTQ minmax per-tensor": ("minmax", False),
}


def demo_inputs(demo: Path, seeds: list[int]) -> tuple[Path, list[Path], dict[str, Any], Any]:
    """(teacher checkpoint, student checkpoints, SynthFaces data block, the demo's settings) of
    the default demo in `demo`, running the demo's spine experiment first when any is missing."""
    teacher = demo / "teacher" / "backbone.pth"
    students = [demo / "students" / "kd_l2" / f"seed{k}" / "backbone.pth" for k in seeds]
    if not teacher.is_file() or not all(s.is_file() for s in students):
        facekd = Path(sys.executable).with_name("facekd")
        cmd = [str(facekd), "demo", "--only", "spine", "--seeds", str(max(seeds) + 1), "--out", str(demo)]
        print(f"[quantize] demo student missing: running {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    from facekd.demo import tier_settings

    settings = tier_settings("default")
    block = {"kind": "synthfaces", "preset": settings.data_preset, "synthfaces": settings.data}
    return teacher, students, {**block, "cache_dir": str(demo / "data")}, settings


def paired_interval(a: np.ndarray, b: np.ndarray, issame: np.ndarray, n: int = 1000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of TAR@FAR(b) − TAR@FAR(a) on the same pairs: genuine and impostor
    pairs resampled separately, both score vectors on each resample (strict convention)."""
    rng = np.random.default_rng(seed)
    gen, imp = np.flatnonzero(issame), np.flatnonzero(~issame)
    diffs = []
    for _ in range(n):
        rows = np.concatenate([rng.choice(gen, gen.size), rng.choice(imp, imp.size)])
        y = issame[rows]
        diffs.append(tar_at_far(b[rows], y, [FAR])[0].tar - tar_at_far(a[rows], y, [FAR])[0].tar)
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def pair_scores(path: Path, test, pairs) -> np.ndarray:
    """Cosine scores of the test pairs with the flip-summed embeddings of an ONNX model."""
    emb = embed_images(OnnxTeacher(path, threads=1), test, flip=True)
    return np.einsum("ij,ij->i", emb[pairs.a], emb[pairs.b])


def tar(report: dict, name: str, far: float = FAR) -> float:
    return next(t["tar"] for t in report["models"][name]["eval"]["synthfaces"]["tar_at_far"] if t["far"] == far)


def ptq_models(student: Path, arch: str, dataset, out: Path, n_calib: int) -> dict[str, Path]:
    """fp32 export and the PTQ variants of one student."""
    model = load_backbone(student, arch)
    models = {"fp32": export_onnx(model, out / "fp32.onnx")}
    reader = DatasetCalibrationReader(dataset, n_calib, seed=0)
    for name, (calibrator, per_channel) in PTQ.items():
        path = out / (name.replace("int8 PTQ ", "ptq_").replace(" ", "_") + ".onnx")
        t0 = time.perf_counter()
        models[name] = quantize_onnx(models["fp32"], path, reader, calibrator, per_channel)
        print(f"[quantize] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return models


def qat_run(demo, student: Path, teacher: Path, block: dict, run_dir: Path, seed: int, n_calib: int, **over) -> dict:
    """One quantization-aware distillation run (`run_qat`) of a demo student; returns its report.
    `over`: QATConfig keys replaced (the validation study's variants)."""
    cfg = QATConfig.model_validate(
        {
            "student": {"checkpoint": str(student), "arch": demo.student.arch},
            "teacher": {"checkpoint": str(teacher), "arch": demo.teacher.arch, "online": True},
            "data": block,
            "distill": {"loss": "l2", "weighting": "uniform", "lambda": 1.0},
            "train": {"seed": seed},
            "quantize": {"calibrator": "minmax", "calibration_images": n_calib},
            "eval": {"latency_repeats": 10},
            "run_dir": str(run_dir),
            **over,
        }
    )
    t0 = time.perf_counter()
    report = run_qat(cfg, progress=False, command=f"benchmarks/quantize.py (QAT seed {seed})")
    print(f"[quantize] QAT {run_dir.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return report


def measure_student(args, demo, k: int, student: Path, teacher: Path, block: dict, dataset) -> dict:
    """Everything about one student seed: PTQ comparison, QAT runs, paired intervals."""
    out = args.out / f"student{k}"
    models = ptq_models(student, demo.student.arch, dataset, out, args.calibration_images)
    sets = EvalSets(synthfaces=block)
    side = dataset.image_size
    ptq = compare(models, "fp32", sets, (side, side), quantized=tuple(PTQ), repeats=args.latency_repeats)
    test, pairs = synthfaces_test(block)
    issame = np.asarray(pairs.issame, bool)
    scores = {name: pair_scores(p, test, pairs) for name, p in models.items()}
    result: dict[str, Any] = {"ptq": ptq, "qat": {}, "intervals": {}}
    for name in PTQ:
        result["intervals"][name] = paired_interval(scores["fp32"], scores[name], issame)
    for j in args.qat_seeds:
        rep = qat_run(demo, student, teacher, block, out / f"qat{j}", j, args.calibration_images)
        result["qat"][str(j)] = {"report": rep}
        for name in ("int8 QAT", "int8 QAT, learned ranges", "fp32 after QAT"):
            qat_scores = pair_scores(Path(rep["models"][name]["path"]), test, pairs)
            result["qat"][str(j)][name] = {
                "delta": tar(rep, name) - tar(rep, "fp32"),
                "interval": paired_interval(scores["fp32"], qat_scores, issame),
            }
    return result


def validate(args, demo, student: Path, teacher: Path, block: dict) -> dict[str, dict[str, float]]:
    """The validation study behind the QAT defaults: BatchNorm statistics frozen or not, crossed
    with the INT8 graph's activation ranges (calibrated / learned; every run writes both), scored by
    the change of TAR@1e-3 against fp32 on validation pairs: SynthFaces rendered with another seed
    (other identities and images), never the test pairs the benchmark reports."""
    val_block = {**block, "synthfaces": {**block.get("synthfaces", {}), "seed": args.validation_seed}}
    val_block["cache_dir"] = str(args.out / "validation_data")
    result = {}
    for freeze in (False, True):
        for j in args.qat_seeds:
            run = args.out / "validation" / f"freeze_bn_{freeze}_seed{j}"
            over = {"freeze_bn": freeze, "eval": {"synthfaces": val_block, "latency_repeats": 3}}
            rep = qat_run(demo, student, teacher, block, run, j, args.calibration_images, **over)
            deltas = {name: round(tar(rep, name) - tar(rep, "fp32"), 4) for name in rep["models"]}
            result[f"freeze_bn={freeze}, QAT seed {j}"] = deltas
            print(f"[quantize] validation freeze_bn={freeze} seed {j}: {deltas}", flush=True)
    return result


def summarise(results: dict[str, dict]) -> str:
    """Markdown tables of the benchmark (the README's numbers)."""
    lines = ["| student | model | size / fp32 | TAR@1e-2 | TAR@1e-3 | TAR@1e-4 | Δ TAR@1e-3 [95 % paired CI] |"]
    lines.append("|---|---|---|---|---|---|---|")
    for k, r in results.items():
        ptq = r["ptq"]
        for name, m in ptq["models"].items():
            tars = " | ".join(f"{tar(ptq, name, f):.4f}" for f in (1e-2, 1e-3, 1e-4))
            ci = r["intervals"].get(name)
            delta = "" if ci is None else f"{tar(ptq, name) - tar(ptq, 'fp32'):+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
            lines.append(f"| {k} | {name} | {m['size_ratio']:.3f} | {tars} | {delta} |")
        for name in ("int8 QAT", "int8 QAT, learned ranges", "fp32 after QAT"):
            for j, q in r["qat"].items():
                rep, d = q["report"], q[name]
                tars = " | ".join(f"{tar(rep, name, f):.4f}" for f in (1e-2, 1e-3, 1e-4))
                ratio = rep["models"][name]["size_ratio"]
                ci = d["interval"]
                cells = f"{tars} | {d['delta']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
                lines.append(f"| {k} | {name} (QAT seed {j}) | {ratio:.3f} | {cells} |")
    return "\n".join(lines)


def latency_table(results: dict[str, dict]) -> str:
    """Batch 1 / 32 latency of the first student's fp32 and PTQ graphs, measured interleaved (an
    int8 QAT graph has the same operators as the MinMax PTQ one)."""
    rep = next(iter(results.values()))["ptq"]
    lines = ["| model | batch 1 (ms) | batch 32 (ms / image) | batch 1 / fp32 | batch 32 / fp32 |"]
    lines.append("|---|---|---|---|---|")
    base = rep["models"]["fp32"]["latency"]
    for name, m in rep["models"].items():
        lat = m["latency"]
        r1, r32 = lat["1"]["ms"] / base["1"]["ms"], lat["32"]["ms"] / base["32"]["ms"]
        lines.append(f"| {name} | {lat['1']['ms']:.3f} | {lat['32']['ms_per_image']:.4f} | {r1:.2f} | {r32:.2f} |")
    return "\n".join(lines)


def verdict(results: dict[str, dict]) -> dict[str, Any]:
    ratios = [r["ptq"]["models"]["int8 PTQ minmax"]["size_ratio"] for r in results.values()]
    qat = [q["int8 QAT"]["delta"] for r in results.values() for q in r["qat"].values()]
    learned = [q["int8 QAT, learned ranges"]["delta"] for r in results.values() for q in r["qat"].values()]
    ptq = [tar(r["ptq"], "int8 PTQ minmax") - tar(r["ptq"], "fp32") for r in results.values()]
    return {
        "size_ratio": max(ratios),
        "size_bar_met": max(ratios) <= 0.35,
        "qat_delta_mean": float(np.mean(qat)) if qat else None,
        "qat_delta_std": float(np.std(qat, ddof=1)) if len(qat) > 1 else None,
        "qat_delta_min": min(qat) if qat else None,
        "qat_bar_met": bool(qat) and min(qat) >= -0.01 - 1e-9,  # a drop of exactly 0.01 is within it
        "qat_learned_ranges_delta_mean": float(np.mean(learned)) if learned else None,
        "qat_learned_ranges_delta_std": float(np.std(learned, ddof=1)) if len(learned) > 1 else None,
        "ptq_minmax_delta_mean": float(np.mean(ptq)),
        "ptq_minmax_delta_std": float(np.std(ptq, ddof=1)) if len(ptq) > 1 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-dir", type=Path, default=Path("runs/demo/default"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench/quantize"))
    ap.add_argument("--student-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--qat-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--latency-repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (training, export)")
    ap.add_argument("--validate", action="store_true", help="run the validation study of the QAT settings instead")
    ap.add_argument("--validation-seed", type=int, default=1, help="SynthFaces seed of the validation pairs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher, students, block, demo = demo_inputs(args.demo_dir, args.student_seeds)
    if args.validate:
        study = validate(args, demo, students[0], teacher, block)
        save_json(args.out / "validation.json", study)
        print(json.dumps(study, indent=1))
        return
    dataset = load_dataset(block)
    results = {}
    for k, student in zip(args.student_seeds, students):
        results[f"seed {k}"] = measure_student(args, demo, k, student, teacher, block, dataset)
    summary = verdict(results)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    save_json(args.out / "quantize.json", {"args": settings, "verdict": summary, "results": results})
    text = "\n\n".join([summarise(results), latency_table(results), json.dumps(summary, indent=2)])
    (args.out / "quantize.md").write_text(text + "\n")
    print(text)
    print(f"machine: {os.cpu_count()} cores; wrote {args.out / 'quantize.json'}")


if __name__ == "__main__":
    main()
