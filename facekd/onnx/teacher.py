"""`OnnxTeacher`: distil from a model-zoo ONNX recognition model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from facekd.onnx.check import detect_pixel_norm, run_batched

__all__ = ["OnnxTeacher"]


class OnnxTeacher(nn.Module):
    """A model-zoo ONNX recognition model as a (parameter-free, frozen) module.

    forward(x (B, 3, H, W) float in [-1, 1], RGB) → embedding (B, d) float32 on x's device. The
    input/output names come from the session. If the graph normalises in-graph (Sub+Mul among the
    first 8 nodes, see `detect_pixel_norm`) it is fed 0–255 pixels, otherwise x itself; `pixel_norm`
    = (mean, std) overrides this (feeds (pixels − mean) / std). `threads` sets onnxruntime's
    intra- and inter-op thread counts (None: its default).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        pixel_norm: tuple[float, float] | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ):
        super().__init__()
        import onnxruntime as ort

        self.path = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
        self.session = ort.InferenceSession(self.path, options, providers=list(providers or ["CPUExecutionProvider"]))
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
                f"OnnxTeacher({self.path}): expected input (B, 3, {self.input_size[0]}, {self.input_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        blob = x.detach().float().cpu().numpy()
        if (self.mean, self.std) != (127.5, 127.5):
            blob = ((blob * 127.5 + 127.5) - self.mean) / self.std
        out = run_batched(self.session, self.input_name, self.output_name, blob.astype(np.float32), self.fixed_batch)
        return torch.from_numpy(out.astype(np.float32)).to(x.device)
