"""fp32 and int8 ONNX graphs side by side: TAR@FAR on the same pairs, file size, CPU latency through
onnxruntime with one thread, and the MFR checks where they apply.

Evaluation sets (`EvalSets`): the SynthFaces test pairs of a SynthFaces data block (per-group TAR
included), insightface `.bin` sets and an IJB-B/C release. Every metric is facekd.evaluate's:
`evaluate_pairs` (SynthFaces, `.bin`), `accuracy_flip` (insightface's `.bin` accuracy),
`embed_ijb` + `evaluate_ijb` (IJB). The graphs run through `facekd.onnx.OnnxTeacher`, so the same
code embeds a PyTorch model and an ONNX file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from facekd.onnx import OnnxTeacher, check_onnx
from facekd.onnx.check import FP32_WEIGHTS_CHECK

__all__ = [
    "FARS",
    "INT8_EXEMPT_CHECKS",
    "EvalSets",
    "compare",
    "embed_images",
    "evaluate_model",
    "latency",
    "mfr_checks",
]

FARS = (1e-2, 1e-3, 1e-4)

# MFR checks that an INT8 graph fails by construction, with the reason they do not apply.
INT8_EXEMPT_CHECKS = {
    FP32_WEIGHTS_CHECK: "an INT8 graph stores int8 weights and int32 biases by design; the ICCV21-MFR rule "
    "asks fp32 submissions not to smuggle in reduced precision",
}


@dataclass
class EvalSets:
    """Where to measure TAR@FAR. `synthfaces`: a data block of kind synthfaces (its test split and
    pairs are used); `bins`: insightface `.bin` files; `ijb`: an IJB release folder (meta/ and
    loose_crop/) with `ijb_target` IJBC or IJBB. `flip`: insightface's flip-sum embeddings."""

    synthfaces: dict[str, Any] | None = None
    bins: Sequence[Path] = field(default_factory=tuple)
    ijb: Path | None = None
    ijb_target: str = "IJBC"
    flip: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "synthfaces": self.synthfaces,
            "bins": [str(b) for b in self.bins],
            "ijb": str(self.ijb) if self.ijb else None,
            "ijb_target": self.ijb_target,
            "flip": self.flip,
        }

    def __bool__(self) -> bool:
        return bool(self.synthfaces or self.bins or self.ijb)


def synthfaces_test(block: Mapping[str, Any]):
    """(test dataset, VerificationPairs) of the SynthFaces data block `block`."""
    from facekd.config import DataConfig
    from facekd.synthfaces import SynthFacesConfig, make_synthfaces

    cfg = DataConfig.model_validate({**block, "split": "test"})
    if cfg.kind != "synthfaces":
        raise ValueError(f"SynthFaces evaluation needs a data block of kind synthfaces, got kind {cfg.kind}")
    data = make_synthfaces(SynthFacesConfig.preset(cfg.preset, **cfg.synthfaces), cache_dir=cfg.cache_dir)
    return data.test, data.pairs


@torch.no_grad()
def embed_images(model: nn.Module, dataset, flip: bool = True, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings (N, d) float32 of every row of `dataset` (flip-sum when `flip`)."""
    from torch.utils.data import DataLoader

    from facekd.embed import embed_batch

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return torch.cat([embed_batch(model, b["image"], flip=flip) for b in loader]).numpy()


def _bin_result(model: nn.Module, path: Path, flip: bool) -> dict:
    """TAR@FAR (strict, on the flip-summed pair embeddings) and insightface's Accuracy-Flip on a `.bin`."""
    from facekd.data.binset import load_bin
    from facekd.evaluate.model_eval import embed_raw_flip, model_image_size
    from facekd.evaluate.verification import accuracy_flip, evaluate_pairs

    images, issame = load_bin(path, image_size=model_image_size(model))
    orig, mirrored = embed_raw_flip(model, images)
    emb = orig + mirrored if flip else orig
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rows = np.arange(0, len(images), 2)
    result = evaluate_pairs(emb, SimpleNamespace(a=rows, b=rows + 1, issame=np.asarray(issame, bool)), fars=FARS)
    result["accuracy_flip"] = accuracy_flip(orig, mirrored, issame).mean
    return result


def _ijb_result(model: nn.Module, root: Path, target: str, flip: bool) -> dict:
    from facekd.data.ijb import read_ijb_meta
    from facekd.evaluate.ijb import evaluate_ijb
    from facekd.evaluate.model_eval import embed_ijb

    feats, feats_flip = embed_ijb(model, root, target)
    m = read_ijb_meta(root, target)
    res = evaluate_ijb(
        feats,
        m.templates,
        m.medias,
        m.pairs_t1,
        m.pairs_t2,
        m.pairs_label,
        features_flip=feats_flip if flip else None,
        faceness=m.faceness,
        flip="sum" if flip else "none",
        fars=FARS,
    ).to_dict()
    res["tar_at_far"] = res["tar_at_far_strict"]
    return res


def evaluate_model(model: nn.Module, sets: EvalSets) -> dict[str, dict]:
    """{set name: result} for a model (an `OnnxTeacher` or any backbone). Results carry
    `tar_at_far` (strict convention, `FARS`) and, for SynthFaces, `groups` (per-group TAR)."""
    results = {}
    if sets.synthfaces:
        from facekd.evaluate.verification import evaluate_pairs

        test, pairs = synthfaces_test(sets.synthfaces)
        emb = embed_images(model, test, sets.flip)
        results["synthfaces"] = evaluate_pairs(emb, pairs, groups=test.groups, fars=FARS)
    for path in sets.bins:
        results[f"bin:{Path(path).stem}"] = _bin_result(model, Path(path), sets.flip)
    if sets.ijb:
        results[sets.ijb_target.upper()] = _ijb_result(model, Path(sets.ijb), sets.ijb_target, sets.flip)
    return results


def latency(
    paths: Mapping[str, Path],
    input_size: tuple[int, int],
    batches: Sequence[int] = (1, 32),
    threads: int = 1,
    repeats: int = 50,
    budget_s: float = 20.0,
    warmup: int = 3,
) -> dict[str, dict[str, dict[str, float]]]:
    """CPU latency through onnxruntime with `threads` intra-op threads: {model: {batch: {"ms",
    "ms_per_image", "runs"}}}, medians over up to `repeats` runs on random input (fewer, but at
    least 3, once a batch size has used `budget_s` seconds: large models stay affordable). The
    models run interleaved (one run of each per round), so they share the machine's state: their
    ratio is the meaningful number on a shared machine."""
    sessions = {name: OnnxTeacher(p, threads=threads) for name, p in paths.items()}
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in paths}
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.uniform(-1, 1, size=(b, 3, *input_size)).astype(np.float32)
        times: dict[str, list[float]] = {name: [] for name in paths}
        start = time.perf_counter()
        for r in range(warmup + repeats):
            for name, t in sessions.items():
                t0 = time.perf_counter()
                t.session.run([t.output_name], {t.input_name: x})
                if r >= warmup:
                    times[name].append(time.perf_counter() - t0)
            if r >= warmup + 2 and time.perf_counter() - start > budget_s:
                break
        for name, ts in times.items():
            ms = float(np.median(ts)) * 1000
            out[name][str(b)] = {"ms": round(ms, 4), "ms_per_image": round(ms / b, 4), "runs": len(ts)}
    return out


def mfr_checks(path: Path, input_size: tuple[int, int], track: str = "ms1m", quantized: bool = False) -> dict:
    """facekd.onnx.check_onnx on `path`; with `quantized`, the checks an INT8 graph fails by design
    (`INT8_EXEMPT_CHECKS`) are kept but marked as not applying, with the reason, and `ok` is over
    the checks that apply."""
    report = check_onnx(path, track=track, input_size=input_size)
    checks = []
    for c in report.checks:
        why = INT8_EXEMPT_CHECKS.get(c.name) if quantized else None
        checks.append({"name": c.name, "passed": c.passed, "detail": c.detail, "applies": why is None, "why": why})
    ok = bool(checks) and all(c["passed"] for c in checks if c["applies"])
    return {"ok": ok, "checks": checks, "info": report.info}


def compare(
    models: Mapping[str, Path],
    baseline: str,
    sets: EvalSets,
    input_size: tuple[int, int],
    quantized: Sequence[str] = (),
    threads: int = 1,
    repeats: int = 50,
    track: str = "ms1m",
) -> dict[str, Any]:
    """Every model of `models` ({name: ONNX path}) on the same evaluation sets, with file size
    (and its ratio to `baseline`'s), batch 1 / 32 latency and the MFR checks (`quantized`
    names the INT8 graphs). Returns plain data (JSON-able)."""
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models {list(models)}")
    base_size = os.path.getsize(models[baseline])
    report: dict[str, Any] = {"baseline": baseline, "eval_sets": sets.describe(), "models": {}}
    for name, path in models.items():
        size = os.path.getsize(path)
        report["models"][name] = {
            "path": str(path),
            "size_bytes": size,
            "size_ratio": round(size / base_size, 4),
            "eval": evaluate_model(OnnxTeacher(path, threads=threads), sets) if sets else {},
            "checks": mfr_checks(Path(path), input_size, track, quantized=name in quantized),
        }
    lat = latency(models, input_size, threads=threads, repeats=repeats)
    for name in models:
        report["models"][name]["latency"] = lat[name]
    report["latency_threads"] = threads
    return report
