"""ONNX export in the ICCV21-MFR / insightface model-zoo format, a re-implementation of the MFR
submission checker, and `OnnxTeacher` to distil from a model-zoo ONNX file.

Export format (what insightface's `ArcFaceORT` / `ArcFaceONNX` expect):
- one NCHW float input named `data`, shape (batch, 3, H, W) with a symbolic batch (dim_param "None");
- one output `embedding` (batch, d), the raw (un-normalised) embedding;
- fp32 initializers only; opset 17 (TorchScript exporter: no onnxscript needed);
- input normalisation either outside the graph (feed (x − 127.5) / 127.5, the default) or, with
  `pixel_input=True`, in the graph as `Sub(127.5)` then `Mul(1/127.5)` as the first nodes (named
  `Sub_*` / `Mul_*` so the official name-based rule finds them), so it takes 0–255 RGB pixels.

The checker (`check_onnx`) follows `arcface_torch/onnx_helper.py::ArcFaceORT.check` and the MFR
rules in docs/models.md; it returns every check with pass/fail and the reason instead of stopping
at the first failure.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .models._common import pair
from .utils import atomic_path

TRACK_MAX_DIM = {"ms1m": 512, "cfat": 512, "glint": 1024, "unconstrained": 1024}
MAX_MODEL_MB = 1024.0


class _ExportWrapper(nn.Module):
    """Embedding-only forward, optionally preceded by in-graph pixel normalisation."""

    def __init__(self, model: nn.Module, pixel_input: bool):
        super().__init__()
        self.model, self.pixel_input = model, pixel_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixel_input:
            x = (x - 127.5) * (1.0 / 127.5)
        return self.model(x)


def _inline_identity_initializers(model: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes (the exporter's de-duplication of equal weights) by
    initializers, so the graph starts with real computation (the checker looks at the first 8 nodes)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            g.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size=None,
    opset: int = 17,
    pixel_input: bool = False,
) -> Path:
    """Export `model` (forward(x) → (B, d)) to ONNX at `path`, atomically; returns the path.

    Args:
        input_size: side or (H, W); default `model.input_size`, else 112.
        pixel_input: put (x − 127.5) / 127.5 inside the graph (input 0–255 RGB) instead of outside.
    """
    h, w = pair(input_size if input_size is not None else getattr(model, "input_size", 112))
    was_training = model.training
    wrapper = _ExportWrapper(model, pixel_input).float().eval()
    dummy = torch.zeros(1, 3, h, w)
    if pixel_input:
        dummy += 127.5
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(tmp),
                dynamo=False,
                input_names=["data"],
                output_names=["embedding"],
                opset_version=opset,
                dynamic_axes={"data": {0: "None"}, "embedding": {0: "None"}},
                do_constant_folding=True,
            )
            proto = onnx.load(str(tmp))
            _inline_identity_initializers(proto)
            for i, node in enumerate(proto.graph.node[:8]):
                if node.op_type in ("Sub", "Mul") and not node.name.startswith(node.op_type):
                    node.name = f"{node.op_type}_{i}"
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
    finally:
        model.train(was_training)
    return Path(path)


# ------------------------------------------------------------------------------------ the checker
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
    info: dict = field(default_factory=dict)

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


def _read_numbers(path: Path, n: int, kind=float) -> list | None:
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


def _run_batched(sess, name: str, out: str, blob: np.ndarray, fixed: int | None) -> np.ndarray:
    """Run `blob` through the session, in zero-padded chunks of `fixed` rows when the batch is fixed."""
    if fixed is None:
        return sess.run([out], {name: blob})[0]
    outs = []
    for i in range(0, len(blob), fixed):
        chunk = blob[i : i + fixed]
        pad = np.zeros((fixed - len(chunk),) + chunk.shape[1:], chunk.dtype)
        outs.append(sess.run([out], {name: np.concatenate([chunk, pad])})[0][: len(chunk)])
    return np.concatenate(outs)


def estimate_flops(model: onnx.ModelProto, input_shape: tuple[int, int, int, int]) -> float:
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


def check_onnx(
    path: str | os.PathLike,
    track: str = "ms1m",
    input_size=None,
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
    (no reversing op, and f(flip x) not equal to f(x)
    to 1e-4 of the difference between two random images). Latency (median-ish of 20 batch-1
    runs, like the official 6th-fastest of 50) and GFLOPs are measured, and checked only when
    `max_time_ms` / `max_gflops` are given (the official limits are for a V100 GPU).
    Normalisation follows the official rule: pixel_norm.txt, else Sub+Mul among the first 8
    nodes → mean 0, std 1, else mean = std = 127.5.
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
    graph = proto.graph

    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    shape = inputs[0].shape
    rep.add("single input", len(inputs) == 1, f"{len(inputs)} input(s): {[i.name for i in inputs]}")
    if not rep.add("input is 4-D NCHW with 3 channels", len(shape) == 4 and shape[1] == 3, f"input shape {shape}"):
        return rep
    rep.add(
        "dynamic batch",
        isinstance(shape[0], str),
        f"batch dim is {shape[0]!r}"
        + (
            ""
            if isinstance(shape[0], str)
            else " (fixed; the official checker rewrites it to 'None', which breaks graphs that reshape with a fixed batch)"
        ),
    )
    crop = _read_numbers(folder / "crop.txt", 6, int) if folder else None
    expect = pair(input_size) if input_size is not None else (tuple(crop[4:6][::-1]) if crop else (112, 112))
    rep.add("input size", tuple(shape[2:4]) == expect, f"H×W {tuple(shape[2:4])}, expected {expect}")
    rep.add("single output", len(outputs) == 1, f"{len(outputs)} output(s): {[o.name for o in outputs]}")
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
        "fp32 weights (no initializer < 4 bytes)",
        not narrow,
        "all ≥ 4 bytes" if not narrow else f"{len(narrow)} narrow: {narrow[:5]}",
    )

    pn = _read_numbers(folder / "pixel_norm.txt", 2) if folder else None
    if pn is not None:
        mean, std, how = pn[0], pn[1], "pixel_norm.txt"
    elif detect_pixel_norm(graph):
        mean, std, how = 0.0, 1.0, "Sub+Mul among the first 8 nodes (in-graph normalisation)"
    else:
        mean, std, how = 127.5, 127.5, "no in-graph normalisation found: feeding (x - 127.5) / 127.5"
    rep.info.update(input_mean=mean, input_std=std, normalisation=how)

    h, w = expect if isinstance(shape[2], str) or isinstance(shape[3], str) else (int(shape[2]), int(shape[3]))
    fixed = None if isinstance(shape[0], str) else int(shape[0])
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(32, 3, h, w)).astype(np.float32)
    blob = (pixels - mean) / std
    name, out = inputs[0].name, outputs[0].name
    try:
        ref = _run_batched(sess, name, out, blob, fixed)
        single = np.concatenate([_run_batched(sess, name, out, blob[i : i + 1], fixed) for i in range(4)])
        flipped = _run_batched(sess, name, out, blob[:4, :, :, ::-1].copy(), fixed)
    except Exception as e:
        rep.add("runs on onnxruntime", False, f"{type(e).__name__}: {str(e)[:300]}")
        return rep
    rep.add("runs on onnxruntime", True, f"output shape {tuple(ref.shape)}")
    dim = int(np.prod(ref.shape[1:]))
    rep.info["feature_dim"] = dim
    rep.add(
        f"feature dim ≤ {TRACK_MAX_DIM[track]} ({track})",
        ref.ndim == 2 and dim <= TRACK_MAX_DIM[track],
        f"output shape {tuple(ref.shape)}",
    )
    finite = bool(np.isfinite(ref).all())
    rep.add("no NaN / inf", finite, "finite on 32 random images" if finite else "non-finite values in the output")
    if fixed is None:
        diff = np.abs(ref[:4] - single) / np.maximum(1.0, np.abs(single))
        rep.add(
            "batch 1 and batch 32 agree",
            float(diff.max()) <= atol,
            f"max relative difference {diff.max():.2e} (tolerance {atol:g})",
        )
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

    costs = []
    one = blob[:1]
    for _ in range(20):
        t0 = time.perf_counter()
        sess.run([out], {name: one})
        costs.append(time.perf_counter() - t0)
    latency = sorted(costs)[len(costs) // 2] * 1000
    rep.info["latency_ms_cpu"] = round(latency, 3)
    if max_time_ms is not None:
        rep.add(f"latency ≤ {max_time_ms} ms", latency <= max_time_ms, f"{latency:.2f} ms (batch 1, this machine)")
    try:
        gflops = estimate_flops(proto, (1, 3, h, w)) / 1e9
        rep.info["gflops"] = round(gflops, 4)
        if max_gflops is not None:
            rep.add(f"GFLOPs ≤ {max_gflops}", gflops <= max_gflops, f"{gflops:.3f} GFLOPs")
    except Exception as e:  # shape inference can fail on exotic graphs; FLOPs are informative only
        rep.info["gflops"] = f"unavailable ({type(e).__name__})"
    return rep


# ------------------------------------------------------------------------------------ the teacher
class OnnxTeacher(nn.Module):
    """A model-zoo ONNX recognition model as a (parameter-free, frozen) module.

    forward(x (B, 3, H, W) float in [-1, 1], RGB) → embedding (B, d) float32 on x's device. The
    input/output names come from the session. If the graph normalises in-graph (Sub+Mul among the
    first 8 nodes, see `detect_pixel_norm`) it is fed 0–255 pixels, otherwise x itself; `pixel_norm`
    = (mean, std) overrides this (feeds (pixels − mean) / std).
    """

    def __init__(self, path: str | os.PathLike, pixel_norm: tuple[float, float] | None = None, providers=None):
        super().__init__()
        import onnxruntime as ort

        self.path = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        self.session = ort.InferenceSession(self.path, providers=providers or ["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(
                f"{path}: expected one 4-D input and one output, got inputs "
                f"{[(i.name, i.shape) for i in inputs]} and outputs {[o.name for o in outputs]}"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_size = tuple(inputs[0].shape[2:4])
        self.fixed_batch = None if isinstance(inputs[0].shape[0], str) else int(inputs[0].shape[0])
        if pixel_norm is None:
            in_graph = detect_pixel_norm(onnx.load(self.path, load_external_data=False).graph)
            pixel_norm = (0.0, 1.0) if in_graph else (127.5, 127.5)
        self.mean, self.std = float(pixel_norm[0]), float(pixel_norm[1])
        self.embedding_size = outputs[0].shape[1] if len(outputs[0].shape) == 2 else None

    @torch.no_grad()
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] → (B, d) float32."""
        if return_features:
            raise ValueError(f"OnnxTeacher({self.path}): feature maps are not available from an ONNX graph")
        if (
            x.ndim != 4
            or x.shape[1] != 3
            or (all(isinstance(s, int) for s in self.input_size) and tuple(x.shape[2:]) != self.input_size)
        ):
            raise ValueError(
                f"OnnxTeacher({self.path}): expected input (B, 3, {self.input_size[0]}, {self.input_size[1]}), got {tuple(x.shape)}"
            )
        blob = x.detach().float().cpu().numpy()
        if (self.mean, self.std) != (127.5, 127.5):
            blob = ((blob * 127.5 + 127.5) - self.mean) / self.std
        out = _run_batched(self.session, self.input_name, self.output_name, blob.astype(np.float32), self.fixed_batch)
        return torch.from_numpy(out.astype(np.float32)).to(x.device)
