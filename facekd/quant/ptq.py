"""INT8 static post-training quantization of an exported face model with onnxruntime.

`quantize_onnx(fp32, out, reader, calibrator)` runs onnxruntime's pre-processing
(`quant_pre_process`: shape inference and graph fusions such as MatMul + BatchNorm → Gemm) and
`quantize_static` in QDQ format: weights int8, symmetric, per output channel (the depthwise
convolutions of MobileFaceNet need per-channel scales); activations int8, asymmetric, per tensor,
their ranges calibrated on images of the training set by one of three calibrators:

- `minmax`: the smallest and largest value seen (onnxruntime's MinMax);
- `entropy`: the threshold minimising the KL divergence between the histogram and its 8-bit
  quantization (TensorRT's method, "8-bit Inference with TensorRT", Migacz 2017) over 128
  quantized bins. onnxruntime's `quantize_static` fixes the histogram at 128 bins, where the
  search has a single candidate (the full range, |x| ≤ max |x|); facekd therefore runs
  onnxruntime's EntropyCalibrater itself, with `entropy_bins` histogram bins (default 512; TensorRT
  uses 2048, which costs about 4× the time of 512 in onnxruntime's Python search: ~200 s for the
  56 tensors of mbf_tiny on one core), and hands its thresholds to `quantize_static` as tensor
  overrides;
- `percentile`: the 99.999th percentile of |x| (symmetric; `percentile=` to change).

The result keeps the fp32 model's interface (input `data`, dynamic batch, output `embedding`).
`compact_qdq` then drops what the quantized graph stores without need: all-zero zero points of
dequantized convolution weights and biases (zero is the default), node names, doc strings and long
tensor names. Values are unchanged, and onnxruntime fuses the same QDQ groups into QLinearConv /
QGemm (the test checks both); on small students (mbf_tiny: 0.13M weights) these bytes are a third
of the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from facekd.quant.calibration import DatasetCalibrationReader
from facekd.utils import atomic_path

__all__ = ["CALIBRATORS", "ENTROPY_BINS", "compact_qdq", "entropy_ranges", "quantize_onnx"]

CALIBRATORS = ("minmax", "entropy", "percentile")
ENTROPY_BINS = 512  # histogram bins of the entropy calibrator (TensorRT: 2048); 128 quantized bins
ENTROPY_QUANTIZED_BINS = 128


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Silence onnxruntime.quantization's progress prints and its advice through the root logger
    (pre-processing is done here; 1-D weights fall back to one scale by design)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def entropy_ranges(
    model_path: str | os.PathLike, reader: DatasetCalibrationReader, bins: int = ENTROPY_BINS
) -> dict[str, list[dict]]:
    """{tensor name: [{"rmin", "rmax"}]} of every tensor onnxruntime would calibrate, from its
    EntropyCalibrater with `bins` histogram bins (the form of `quantize_static`'s
    TensorQuantOverrides)."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    reader.rewind()
    with tempfile.TemporaryDirectory(prefix="facekd-calib-") as tmp:
        calibrator = create_calibrator(
            Path(model_path),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": bins, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
        )
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
    reader.rewind()
    out = {}
    for name, t in data.data.items():
        lo, hi = (float(np.asarray(v)) for v in t.range_value)
        # float32 scalars: onnxruntime reads their dtype
        out[name] = [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
    return out


def quantize_onnx(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    reader: DatasetCalibrationReader,
    calibrator: str = "minmax",
    per_channel: bool = True,
    percentile: float = 99.999,
    compact: bool = True,
    entropy_bins: int = ENTROPY_BINS,
    overrides: Callable[[Path], dict[str, list[dict]]] | None = None,
) -> Path:
    """Quantize the fp32 ONNX at `model_path` to an INT8 QDQ graph at `out_path` (atomically).

    Args:
        reader: the calibration images (`DatasetCalibrationReader`).
        calibrator: "minmax" | "entropy" | "percentile" (see the module docstring).
        per_channel: per-output-channel weight scales (False: one scale per weight tensor).
        percentile: the percentile of |x| kept by the "percentile" calibrator.
        entropy_bins: histogram bins of the "entropy" calibrator (≥ 128).
        overrides: pre-processed graph path → {tensor: [{"rmin", "rmax"}]} ranges that replace the
            calibrated ones (quantization-aware training's learned ranges).
        compact: apply `compact_qdq` (same values, smaller file).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibrator not in CALIBRATORS:
        raise ValueError(f"unknown calibrator {calibrator!r}; expected one of {', '.join(CALIBRATORS)}")
    if entropy_bins < ENTROPY_QUANTIZED_BINS:
        raise ValueError(f"entropy_bins must be ≥ {ENTROPY_QUANTIZED_BINS}, got {entropy_bins}")
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"{model_path}: no such ONNX file")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="facekd-quant-") as tmp, _quiet_onnxruntime():
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(model_path), str(pre))
        ranges = entropy_ranges(pre, reader, entropy_bins) if calibrator == "entropy" else {}
        ranges.update(overrides(pre) if overrides is not None else {})
        if ranges:
            extra["TensorQuantOverrides"] = ranges
        if calibrator == "percentile":
            extra["CalibPercentile"] = float(percentile)
        reader.rewind()
        with atomic_path(out_path) as out:
            quantize_static(
                str(pre),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method.get(calibrator, CalibrationMethod.MinMax),
                extra_options=extra,
            )
            if compact:
                proto = onnx.load(str(out))
                compact_qdq(proto)
                onnx.save(proto, str(out))
    return Path(out_path)


def _drop_zero_points(graph: onnx.GraphProto) -> None:
    """Remove all-zero, initializer zero points of the DequantizeLinear nodes that feed only
    convolutions (the default is zero of the input's type). Others keep theirs: onnxruntime fuses
    Gemm / MatMul groups into QGemm only with explicit zero points, and a QuantizeLinear's zero
    point fixes its output type."""
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) != 3 or node.input[2] not in inits:
            continue
        if consumers.get(node.output[0]) == {"Conv"} and not numpy_helper.to_array(inits[node.input[2]]).any():
            del node.input[2]
    used = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def compact_qdq(model: onnx.ModelProto) -> None:
    """Shrink a QDQ graph in place without changing what it computes: drop zero zero points of
    dequantized initializers, node names and doc strings, shape annotations, and rename inner
    tensors to short hexadecimal names (graph inputs and outputs keep theirs)."""
    graph = model.graph
    _drop_zero_points(graph)
    keep = {v.name for v in list(graph.input) + list(graph.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, format(len(names), "x"))

    for init in graph.initializer:
        init.name = short(init.name)
        init.doc_string = ""
    for node in graph.node:
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
        node.name, node.doc_string = "", ""
    del graph.value_info[:]
    graph.doc_string = model.doc_string = ""
    onnx.checker.check_model(model)
