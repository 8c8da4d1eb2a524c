"""`OnnxTeacher`: a model-zoo ONNX recognition model (insightface's `w600k_r50.onnx`,
`glintr100.onnx`, or any graph `facekd export` writes) as a frozen teacher / evaluation model.

What it handles, as insightface's `ArcFaceONNX` does:
- the input and output names are read from the session (`data`, `input.1`, ...);
- normalisation: a graph whose first 8 nodes hold a Sub and a Mul normalises 0–255 pixels itself
  (`detect_pixel_norm`) and is fed pixels; any other graph is fed (pixels − 127.5) / 127.5;
- a fixed batch dimension (some zoo graphs are exported with batch 1) is run in zero-padded
  chunks of that size; a symbolic one in one call per batch;
- the CUDA execution provider when onnxruntime has it and the device asks for it, else the CPU.

Its identity is the file's content: `sha256` (what run records and teacher caches hash).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from facekd.onnx.check import detect_pixel_norm, run_batched

__all__ = ["DEFAULT_INPUT_SIZE", "OnnxTeacher", "file_sha256", "onnx_providers"]

DEFAULT_INPUT_SIZE = 112  # insightface's crop side, assumed when a graph leaves H and W symbolic


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def onnx_providers(device: str | torch.device = "auto") -> list[Any]:
    """onnxruntime execution providers for a torch-style device name.

    "auto": CUDA (the current / LOCAL_RANK device) when onnxruntime has the CUDA provider, else the
    CPU; "cpu": the CPU; "cuda[:N]": CUDA device N, with a warning and the CPU when this
    onnxruntime build has no CUDA provider (the `onnxruntime-gpu` package has it).
    """
    import onnxruntime as ort

    dev = str(device)
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if dev == "cpu" or (dev == "auto" and not has_cuda):
        return ["CPUExecutionProvider"]
    if not has_cuda:
        warnings.warn(
            f"device {dev}: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); "
            "the ONNX model runs on the CPU",
            stacklevel=2,
        )
        return ["CPUExecutionProvider"]
    if dev.startswith("cuda:"):
        index = int(dev.split(":", 1)[1])
    elif torch.cuda.is_available():
        index = torch.cuda.current_device()
    else:
        index = int(os.environ.get("LOCAL_RANK", 0))
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def _session(path: str, providers: Sequence[Any], threads: int | None = None):
    """An onnxruntime session using `threads` intra- and inter-op threads (default: as many intra-op
    threads as torch uses, the CPU being shared)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads() if threads is None else int(threads)
    if threads is not None:
        options.inter_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(path, sess_options=options, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        raise ValueError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {str(e)[:300]})") from None


class OnnxTeacher(nn.Module):
    """A model-zoo ONNX recognition model as a (parameter-free, frozen) module.

    forward(x (B, 3, H, W) float RGB in [-1, 1]) → raw embedding (B, d) float32 on x's device.
    `pixel_norm` = (mean, std) overrides the detected normalisation (the graph is then fed
    (pixels − mean) / std). `device` picks the execution provider (`onnx_providers`), or
    `providers` gives them explicitly. Attributes: `input_size` (H, W), `embedding_size` (d, or
    None when the graph leaves it symbolic), `fixed_batch`, `sha256`, `providers` (those in use).
    `threads` sets onnxruntime's intra- and inter-op thread counts (default: torch's thread count).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        pixel_norm: tuple[float, float] | None = None,
        providers: Sequence[Any] | None = None,
        device: str | torch.device = "cpu",
        threads: int | None = None,
    ):
        super().__init__()
        self.path = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        self.session = _session(self.path, providers or onnx_providers(device), threads)
        self.providers = self.session.get_providers()
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            raise ValueError(
                f"{path}: expected one (B, 3, H, W) input and one output, got inputs "
                f"{[(i.name, i.shape) for i in inputs]} and outputs {[(o.name, o.shape) for o in outputs]}"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        hw = inputs[0].shape[2:4]
        self.fixed_size = all(isinstance(s, int) for s in hw)
        self.input_size: tuple[int, int] = (
            (int(hw[0]), int(hw[1])) if self.fixed_size else (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
        )
        batch = inputs[0].shape[0]
        self.fixed_batch = int(batch) if isinstance(batch, int) and batch > 0 else None
        if pixel_norm is None:
            in_graph = detect_pixel_norm(onnx.load(self.path, load_external_data=False).graph)
            pixel_norm = (0.0, 1.0) if in_graph else (127.5, 127.5)
        self.mean, self.std = float(pixel_norm[0]), float(pixel_norm[1])
        out_shape = outputs[0].shape
        self.embedding_size = int(out_shape[1]) if len(out_shape) == 2 and isinstance(out_shape[1], int) else None
        self.sha256 = file_sha256(self.path)

    def extra_repr(self) -> str:
        return f"{self.path}, input {self.input_size}, providers {self.providers}"

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or (self.fixed_size and tuple(x.shape[2:]) != self.input_size):
            h, w = self.input_size
            raise ValueError(
                f"ONNX model {self.path}: expected input (B, 3, {h}, {w}), got {tuple(x.shape)}"
                + (f"; give it {h}×{w} images (e.g. data image_size: {h})" if x.ndim == 4 else "")
            )

    @torch.no_grad()
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] → (B, d) float32."""
        if return_features:
            raise ValueError(
                f"ONNX model {self.path}: feature maps are not available from an ONNX graph "
                "(map losses such as FitNet / AT need a PyTorch teacher: teacher checkpoint + arch)"
            )
        self._check_input(x)
        blob = x.detach().float().cpu().numpy()
        if (self.mean, self.std) != (127.5, 127.5):
            blob = ((blob * 127.5 + 127.5) - self.mean) / self.std
        out = run_batched(self.session, self.input_name, self.output_name, blob.astype(np.float32), self.fixed_batch)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32).reshape(len(out), -1)).to(x.device)
