"""A re-implementation of the ICCV21-MFR submission checker (`check_onnx`).

It follows `arcface_torch/onnx_helper.py::ArcFaceORT.check` and the MFR rules in docs/models.md,
and returns every check with pass/fail and the reason instead of stopping at the first failure.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from facekd.models._common import pair

__all__ = [
    "FP32_WEIGHTS_CHECK",
    "MAX_MODEL_MB",
    "TRACK_MAX_DIM",
    "CheckResult",
    "OnnxCheckReport",
    "check_onnx",
    "detect_pixel_norm",
    "estimate_flops",
    "run_batched",
]

TRACK_MAX_DIM = {"ms1m": 512, "cfat": 512, "glint": 1024, "unconstrained": 1024}
MAX_MODEL_MB = 1024.0
FP32_WEIGHTS_CHECK = "fp32 weights (no initializer < 4 bytes)"


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str


@dataclass
class OnnxCheckReport:
    """All MFR checks of one ONNX file: `.ok` is True when every check passed; `.info` has the
    measured values (feature dim, size MB, latency ms, GFLOPs, input mean/std)."""

    path: str
    checks: list[CheckResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def add(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(CheckResult(name, bool(passed), detail))
        return bool(passed)

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "checks": [asdict(c) for c in self.checks], "info": self.info}

    def __str__(self) -> str:
        lines = [f"ONNX check of {self.path}: {'PASS' if self.ok else 'FAIL'}"]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines += [f"  {k}: {v}" for k, v in self.info.items()]
        return "\n".join(lines)


def _read_numbers(path: Path, n: int, kind: type = float) -> list | None:
    if not path.exists():
        return None
    lines = [s for s in path.read_text().split() if s]
    if len(lines) != n:
        raise ValueError(f"{path}: expected {n} numbers (one per line), got {len(lines)}")
    return [kind(s) for s in lines]


def _resolve_onnx(path: Path) -> tuple[Path, Path | None]:
    """A file, or (as the official checker) the last *.onnx of a directory in sorted order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".onnx")
        if not files:
            raise FileNotFoundError(f"{path}: directory holds no .onnx file")
        return files[-1], path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    return path, None


def detect_pixel_norm(graph: onnx.GraphProto) -> bool:
    """True when the first 8 nodes contain both a subtraction and a multiplication (insightface's
    rule for graphs that normalise 0–255 input themselves; by op type or by name `Sub*`/`_minus*`,
    `Mul*`/`_mul*` as the official checker does)."""
    nodes = graph.node[:8]
    sub = any(n.op_type == "Sub" or n.name.startswith(("Sub", "_minus")) for n in nodes)
    mul = any(n.op_type == "Mul" or n.name.startswith(("Mul", "_mul")) for n in nodes)
    return sub and mul


def _flip_ops(graph: onnx.GraphProto) -> list[str]:
    """Nodes that reverse a tensor: ReverseSequence, or Slice with a constant negative step."""
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    found = []
    for n in graph.node:
        if n.op_type == "ReverseSequence":
            found.append(n.name or n.op_type)
        elif n.op_type == "Slice" and len(n.input) >= 5 and n.input[4] in consts and (consts[n.input[4]] < 0).any():
            found.append(n.name or n.op_type)
    return found


def run_batched(sess: Any, name: str, out: str, blob: np.ndarray, fixed: int | None) -> np.ndarray:
    """Run `blob` through an onnxruntime session, in zero-padded chunks of `fixed` rows when the
    graph's batch is fixed."""
    if fixed is None:
        return sess.run([out], {name: blob})[0]
    outs = []
    for i in range(0, len(blob), fixed):
        chunk = blob[i : i + fixed]
        pad = np.zeros((fixed - len(chunk), *chunk.shape[1:]), chunk.dtype)
        outs.append(sess.run([out], {name: np.concatenate([chunk, pad])})[0][: len(chunk)])
    return np.concatenate(outs)


def estimate_flops(model: onnx.ModelProto, input_shape: Sequence[int]) -> float:
    """Multiply-accumulates ×2 of Conv / Gemm / MatMul nodes for one input of `input_shape`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, input_shape):
        d.ClearField("dim_param")
        d.dim_value = v
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    shapes.update(inits)
    flops = 0.0
    for n in m.graph.node:
        if n.op_type == "Conv" and n.output[0] in shapes and n.input[1] in shapes:
            wshape = shapes[n.input[1]]  # (Cout, Cin/groups, kh, kw)
            flops += 2.0 * math.prod(shapes[n.output[0]]) * math.prod(wshape[1:])
        elif n.op_type in ("Gemm", "MatMul") and n.output[0] in shapes and n.input[0] in shapes:
            k = shapes[n.input[0]][-1]
            flops += 2.0 * math.prod(shapes[n.output[0]]) * k
    return flops


# ------------------------------------------------------------------------------ the check, in steps
def _check_io(rep: OnnxCheckReport, sess: Any, folder: Path | None, input_size: Any) -> tuple[int, int] | None:
    """Input / output layout checks; the expected (H, W), or None when the input is not NCHW-3."""
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    shape = inputs[0].shape
    rep.add("single input", len(inputs) == 1, f"{len(inputs)} input(s): {[i.name for i in inputs]}")
    if not rep.add("input is 4-D NCHW with 3 channels", len(shape) == 4 and shape[1] == 3, f"input shape {shape}"):
        return None
    dynamic = isinstance(shape[0], str)
    rep.add(
        "dynamic batch",
        dynamic,
        f"batch dim is {shape[0]!r}"
        + (
            ""
            if dynamic
            else " (fixed; the official checker rewrites it to 'None', "
            "which breaks graphs that reshape with a fixed batch)"
        ),
    )
    crop = _read_numbers(folder / "crop.txt", 6, int) if folder else None
    expect = pair(input_size) if input_size is not None else ((crop[5], crop[4]) if crop else (112, 112))
    rep.add("input size", tuple(shape[2:4]) == expect, f"H×W {tuple(shape[2:4])}, expected {expect}")
    rep.add("single output", len(outputs) == 1, f"{len(outputs)} output(s): {[o.name for o in outputs]}")
    return expect


def _check_file(rep: OnnxCheckReport, file: Path, graph: onnx.GraphProto) -> None:
    """Graph size, file size and fp32 weights."""
    rep.add("graph has ≥ 8 nodes", len(graph.node) >= 8, f"{len(graph.node)} nodes")
    size_mb = os.path.getsize(file) / 2**20
    rep.info["model_size_mb"] = round(size_mb, 3)
    rep.add("model size ≤ 1024 MB", size_mb <= MAX_MODEL_MB, f"{size_mb:.2f} MB")
    narrow = [
        f"{i.name}:{numpy_helper.to_array(i).dtype}"
        for i in graph.initializer
        if numpy_helper.to_array(i).dtype.itemsize < 4
    ]
    rep.add(
        FP32_WEIGHTS_CHECK,
        not narrow,
        "all ≥ 4 bytes" if not narrow else f"{len(narrow)} narrow: {narrow[:5]}",
    )


def _normalisation(rep: OnnxCheckReport, folder: Path | None, graph: onnx.GraphProto) -> tuple[float, float]:
    """(mean, std) fed to the graph, by the official rule: pixel_norm.txt, else in-graph Sub+Mul."""
    pn = _read_numbers(folder / "pixel_norm.txt", 2) if folder else None
    if pn is not None:
        mean, std, how = pn[0], pn[1], "pixel_norm.txt"
    elif detect_pixel_norm(graph):
        mean, std, how = 0.0, 1.0, "Sub+Mul among the first 8 nodes (in-graph normalisation)"
    else:
        mean, std, how = 127.5, 127.5, "no in-graph normalisation found: feeding (x - 127.5) / 127.5"
    rep.info.update(input_mean=mean, input_std=std, normalisation=how)
    return mean, std


def _check_outputs(
    rep: OnnxCheckReport, sess: Any, graph: onnx.GraphProto, blob: np.ndarray, track: str, atol: float
) -> bool:
    """Runs, feature dim, finite, batch 1 = batch 32, no in-graph flip. False when it does not run."""
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    fixed = None if isinstance(inp.shape[0], str) else int(inp.shape[0])
    try:
        ref = run_batched(sess, inp.name, out.name, blob, fixed)
        single = np.concatenate([run_batched(sess, inp.name, out.name, blob[i : i + 1], fixed) for i in range(4)])
        flipped = run_batched(sess, inp.name, out.name, blob[:4, :, :, ::-1].copy(), fixed)
    except Exception as e:
        rep.add("runs on onnxruntime", False, f"{type(e).__name__}: {str(e)[:300]}")
        return False
    rep.add("runs on onnxruntime", True, f"output shape {tuple(ref.shape)}")
    dim = int(np.prod(ref.shape[1:]))
    rep.info["feature_dim"] = dim
    limit = TRACK_MAX_DIM[track]
    rep.add(f"feature dim ≤ {limit} ({track})", ref.ndim == 2 and dim <= limit, f"output shape {tuple(ref.shape)}")
    finite = bool(np.isfinite(ref).all())
    rep.add("no NaN / inf", finite, "finite on 32 random images" if finite else "non-finite values in the output")
    if fixed is None:
        diff = np.abs(ref[:4] - single) / np.maximum(1.0, np.abs(single))
        detail = f"max relative difference {diff.max():.2e} (tolerance {atol:g})"
        rep.add("batch 1 and batch 32 agree", float(diff.max()) <= atol, detail)
    else:
        rep.add("batch 1 and batch 32 agree", False, f"fixed batch size {fixed}: cannot run both")
    flips = _flip_ops(graph)
    # dynamic test: f(flip x) equal to f(x) to float precision, while different images differ
    d_flip = float(np.abs(ref[:4] - flipped).max())
    d_other = float(np.abs(ref[:4] - ref[4:8]).max())
    invariant = d_other > 0 and d_flip <= 1e-4 * d_other
    rep.add(
        "no in-graph flip",
        not flips and not invariant,
        ("reversing ops: " + ", ".join(flips[:5]) + "; " if flips else "")
        + f"max |f(x) - f(flip x)| = {d_flip:.3g} vs {d_other:.3g} between different images"
        + (" (flip-invariant: the graph probably adds the flipped image)" if invariant else ""),
    )
    return True


def _measure(
    rep: OnnxCheckReport,
    sess: Any,
    proto: onnx.ModelProto,
    one: np.ndarray,
    max_time_ms: float | None,
    max_gflops: float | None,
) -> None:
    """Batch-1 CPU latency (median of 20 runs) and GFLOPs; checked only against given limits."""
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    costs = []
    for _ in range(20):
        t0 = time.perf_counter()
        sess.run([out], {name: one})
        costs.append(time.perf_counter() - t0)
    latency = sorted(costs)[len(costs) // 2] * 1000
    rep.info["latency_ms_cpu"] = round(latency, 3)
    if max_time_ms is not None:
        rep.add(f"latency ≤ {max_time_ms} ms", latency <= max_time_ms, f"{latency:.2f} ms (batch 1, this machine)")
    try:
        gflops = estimate_flops(proto, one.shape) / 1e9
        rep.info["gflops"] = round(gflops, 4)
        if max_gflops is not None:
            rep.add(f"GFLOPs ≤ {max_gflops}", gflops <= max_gflops, f"{gflops:.3f} GFLOPs")
    except Exception as e:  # shape inference can fail on exotic graphs; FLOPs are informative only
        rep.info["gflops"] = f"unavailable ({type(e).__name__})"


def check_onnx(
    path: str | os.PathLike,
    track: str = "ms1m",
    input_size: int | tuple[int, int] | None = None,
    max_time_ms: float | None = None,
    max_gflops: float | None = None,
    atol: float = 1e-4,
    seed: int = 0,
) -> OnnxCheckReport:
    """Run the ICCV21-MFR submission checks on an ONNX file or directory; never raises on a bad model.

    Checks: loads (onnx checker + onnxruntime), one 4-D NCHW 3-channel input, symbolic batch
    dimension, input size = crop size (112×112, or crop.txt / `input_size`), one output, ≥8 nodes,
    size ≤ 1024 MB, no initializer narrower than 4 bytes (no fp16/int8 weights), feature dim ≤ the
    track limit (512 ms1m/cfat, 1024 glint/unconstrained), no NaN/inf on a 32-image batch, batch 1
    and batch 32 give the same per-sample outputs (|Δ| ≤ atol·max(1, |f|)), no in-graph flip
    (no reversing op, and f(flip x) not equal to f(x) to 1e-4 of the difference between two random
    images). Latency (median of 20 batch-1 runs, like the official 6th-fastest of 50) and GFLOPs
    are measured, and checked only when `max_time_ms` / `max_gflops` are given (the official limits
    are for a V100 GPU). Normalisation follows the official rule: pixel_norm.txt, else Sub+Mul
    among the first 8 nodes → mean 0, std 1, else mean = std = 127.5.
    """
    import onnxruntime as ort

    if track not in TRACK_MAX_DIM:
        raise ValueError(f"unknown track {track!r}; known: {', '.join(TRACK_MAX_DIM)}")
    file, folder = _resolve_onnx(Path(path))
    rep = OnnxCheckReport(str(file))
    try:
        proto = onnx.load(str(file))
        onnx.checker.check_model(proto)
        sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as e:
        rep.add("loads", False, f"{type(e).__name__}: {str(e)[:300]}")
        return rep
    rep.add("loads", True, "onnx.checker and onnxruntime accept it")
    expect = _check_io(rep, sess, folder, input_size)
    if expect is None:
        return rep
    _check_file(rep, file, proto.graph)
    mean, std = _normalisation(rep, folder, proto.graph)
    shape = sess.get_inputs()[0].shape
    h, w = expect if isinstance(shape[2], str) or isinstance(shape[3], str) else (int(shape[2]), int(shape[3]))
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 3, h, w)).astype(np.float32)
    blob = (pixels - mean) / std
    if _check_outputs(rep, sess, proto.graph, blob, track, atol):
        _measure(rep, sess, proto, blob[:1], max_time_ms, max_gflops)
    return rep
