"""ONNX export in the ICCV21-MFR / insightface model-zoo format.

Export format (what insightface's `ArcFaceORT` / `ArcFaceONNX` expect):
- one NCHW float input named `data`, shape (batch, 3, H, W) with a symbolic batch (dim_param "None");
- one output `embedding` (batch, d), the raw (un-normalised) embedding;
- fp32 initializers only; opset 17 (TorchScript exporter: no onnxscript needed);
- input normalisation either outside the graph (feed (x − 127.5) / 127.5, the default) or, with
  `pixel_input=True`, in the graph as `Sub(127.5)` then `Mul(1/127.5)` as the first nodes (named
  `Sub_*` / `Mul_*` so the official name-based rule finds them), so it takes 0–255 RGB pixels.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from facekd.models._common import pair
from facekd.utils import atomic_path

__all__ = ["export_onnx"]


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
    input_size: int | tuple[int, int] | None = None,
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
