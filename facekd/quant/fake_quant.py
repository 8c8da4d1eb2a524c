"""Fake quantization of a backbone with torch.ao.quantization, placed where the deployed INT8 graph
quantizes.

The INT8 graph is made by onnxruntime from the fp32 export (`facekd.quant.ptq`): Conv + BatchNorm
and bias-free Linear + BatchNorm are folded; every remaining compute tensor — the graph input, folded
convolution outputs, BatchNorm, PReLU / ReLU and Linear outputs, residual sums — is quantized per
tensor, asymmetric int8; Conv / Linear weights per output channel, symmetric int8 in [−127, 127].
`prepare_qat` simulates the same in PyTorch:

- weights: `torch.ao.nn.qat.Conv2d` / `Linear` with a per-channel symmetric fake quantizer whose
  range is the current weights' (averaging constant 1). Per-output-channel scales commute with
  the BatchNorm folding done at export (it multiplies each output channel by one number), so
  quantizing the unfolded weights per channel is exactly what the folded graph does;
- activations: a `FakeQuantize` (moving-average min/max, the torch.ao default) on the input of
  the model and on the output of every module whose output the INT8 graph materialises, found by
  one probing forward (no tracing, so every backbone family works): compute leaves (convolution,
  linear, normalisation, activation) unless their output only feeds a BatchNorm folded into them
  or a ReLU fused with them, and container modules that compute their own output after their
  children (residual sums). Shape-only leaves (Flatten, Dropout, Identity) are skipped: the INT8
  graph gives a Flatten's output its input's scale, so it changes no value.

The fake quantizers are submodules, so their state is in `state_dict()` (a QAT run checkpoints and
resumes like any other); `float_state_dict` drops them again, giving the backbone's own keys.
`learned_ranges` hands the ranges the activation quantizers learned to the ONNX quantizer, so an
INT8 graph can use the ranges the student was trained with instead of recalibrated ones.
`freeze_bn_statistics` keeps BatchNorm in eval mode during the fine-tune.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.nn import qat as nnqat
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
)

__all__ = [
    "QCONFIG",
    "float_state_dict",
    "freeze_bn_statistics",
    "learned_ranges",
    "prepare_qat",
    "quantization_points",
]

QCONFIG = QConfig(
    activation=FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_tensor_affine,
    ),
    weight=FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        averaging_constant=1.0,
        quant_min=-127,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    ),
)

OUTPUT_FQ = "activation_fake_quant"
INPUT_FQ = "input_fake_quant"
_FQ_NAMES = frozenset({OUTPUT_FQ, INPUT_FQ, "weight_fake_quant"})
_SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity)
_FUSED_RELU = (nn.ReLU, nn.ReLU6)


def _folds_into_batchnorm(module: nn.Module) -> bool:
    """Whether a following BatchNorm disappears into `module` in the deployed graph: the ONNX
    exporter folds it into a convolution, onnxruntime's pre-processing into a bias-free Linear
    (MatMul + BatchNormalization → Gemm, MobileFaceNet's GDC); a Linear with a bias stays a Gemm
    followed by a BatchNormalization (IResNet's fc + features)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return True
    return isinstance(module, nn.Linear) and module.bias is None


def _probe(model: nn.Module, input_size: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """{module name: {"module", "leaf", "ins": tensor ids, "out": tensor id or None}} from one
    eval-mode forward of a 2-image zero batch (tensors are kept alive so ids stay unique)."""
    seen: dict[str, dict[str, Any]] = {}
    alive: list[Any] = []
    hooks = []

    def hook(name: str):
        def fn(module, inputs, output):
            alive.extend([inputs, output])
            seen[name] = {
                "module": module,
                "leaf": not any(True for _ in module.children()),
                "ins": {id(x) for x in inputs if torch.is_tensor(x)},
                "out": id(output) if torch.is_tensor(output) else None,
            }

        return fn

    for name, module in model.named_modules():
        hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def quantization_points(model: nn.Module, input_size: tuple[int, int]) -> list[str]:
    """Names of the modules whose output the deployed INT8 graph quantizes (see the module docstring)."""
    seen = _probe(model, input_size)
    consumers: dict[int, list[nn.Module]] = {}
    for rec in seen.values():
        if rec["leaf"]:
            for i in rec["ins"]:
                consumers.setdefault(i, []).append(rec["module"])
    points = []
    for name, rec in seen.items():
        module, out = rec["module"], rec["out"]
        if out is None or out in rec["ins"] or isinstance(module, _SHAPE_ONLY):
            continue
        users = consumers.get(out, [])
        if rec["leaf"]:
            folded = (
                _folds_into_batchnorm(module)
                and users
                and all(isinstance(u, nn.modules.batchnorm._BatchNorm) for u in users)
            )
            fused = users and all(isinstance(u, _FUSED_RELU) for u in users)
            if not (folded or fused):
                points.append(name)
        elif name and out not in {r["out"] for n, r in seen.items() if n.startswith(name + ".")}:
            points.append(name)
    return points


def _quantize_output(module: nn.Module, inputs: Any, output: Any) -> Any:
    return getattr(module, OUTPUT_FQ)(output) if torch.is_tensor(output) else output


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (getattr(module, INPUT_FQ)(args[0]), *args[1:])


def _swap_weight_modules(model: nn.Module) -> None:
    """Replace every Conv2d / Linear by its torch.ao.nn.qat twin (same parameters, fake-quantized weight)."""
    swaps: dict[type[nn.Module], Any] = {nn.Conv2d: nnqat.Conv2d, nn.Linear: nnqat.Linear}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            qat_cls = swaps.get(type(child))
            if qat_cls is not None:
                child.qconfig = QCONFIG  # type: ignore[assignment]
                setattr(parent, child_name, qat_cls.from_float(child))


def prepare_qat(model: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """Insert fake quantization into `model` in place (see the module docstring) and return it.

    Call it on the float model before anything else runs it (an observer's range starts from the
    first batch it sees). Parameters keep their names; the quantizers add buffers only.
    """
    if any(isinstance(m, (nnqat.Conv2d, nnqat.Linear)) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already prepared for quantization-aware training")
    points = quantization_points(model, input_size)
    _swap_weight_modules(model)
    for name in points:
        module = model.get_submodule(name)
        module.add_module(OUTPUT_FQ, QCONFIG.activation())
        module.register_forward_hook(_quantize_output)
    model.add_module(INPUT_FQ, QCONFIG.activation())
    model.register_forward_pre_hook(_quantize_input)
    return model


class _FrozenStatistics:
    """Mixin for a BatchNorm class: the module stays in eval mode (normalises with its running
    statistics and does not update them); its affine parameters still train."""

    def train(self, mode: bool = True):
        return super().train(False)  # type: ignore[misc]


_FROZEN: dict[type, type] = {}


def freeze_bn_statistics(model: nn.Module) -> int:
    """Keep every BatchNorm of `model` in eval mode from now on (same parameters, buffers and
    state_dict keys), so a fine-tune runs the deployed graph's arithmetic: the statistics that
    export folds into the weights are the ones the activations are normalised and quantized with.
    Returns the number of BatchNorm modules frozen."""
    n = 0
    for module in model.modules():
        cls = type(module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, _FrozenStatistics):
            frozen = _FROZEN.setdefault(cls, type(f"FrozenStatistics{cls.__name__}", (_FrozenStatistics, cls), {}))
            module.__class__ = frozen
            module.train(False)
            n += 1
    return n


def float_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A prepared model's state_dict without the fake quantizers' buffers: the backbone's own keys,
    loadable into the float model with `strict=True`."""
    return {k: v for k, v in state.items() if not _FQ_NAMES.intersection(k.split("."))}


def _onnx_tensors(onnx_path: str | os.PathLike, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor of an ONNX graph (input included) on `images`, graph optimisations off."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(onnx_path))
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    have = {o.name for o in proto.graph.output}
    extra = [
        inferred[name]
        for node in proto.graph.node
        for name in node.output
        if name in inferred and name not in have and inferred[name].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ]
    proto.graph.output.extend(extra)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    return {name: images, **dict(zip(names, sess.run(names, {name: images})))}


def _float_outputs(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """{quantizer path: the float tensor it quantizes} on `images`, fake quantization and observers
    off for the pass (and restored)."""
    from torch.ao.quantization import disable_fake_quant, disable_observer

    quantizers = {n: m for n, m in model.named_modules() if n.split(".")[-1] in (OUTPUT_FQ, INPUT_FQ)}
    seen: dict[str, np.ndarray] = {}
    hooks = [
        q.register_forward_hook(lambda mod, inputs, out, n=n: seen.__setitem__(n, inputs[0].detach().cpu().numpy()))
        for n, q in quantizers.items()
    ]
    state = {n: (q.fake_quant_enabled.clone(), q.observer_enabled.clone()) for n, q in quantizers.items()}
    was = model.training
    model.apply(disable_fake_quant).apply(disable_observer).eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
        for n, q in quantizers.items():
            q.fake_quant_enabled.copy_(state[n][0])
            q.observer_enabled.copy_(state[n][1])
    return seen


def learned_ranges(
    model: nn.Module, onnx_path: str | os.PathLike, images: torch.Tensor
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """The activation ranges a prepared model learned, keyed by the tensors of the float ONNX export
    they belong to: ({tensor: [{"rmin", "rmax"}]} — onnxruntime's TensorQuantOverrides — , number of
    quantizers matched). A quantizer is matched to the graph tensors that hold the same values on
    `images` (a few calibration images); one without a match is left to the calibrator."""
    floats = _float_outputs(model, images)
    tensors = _onnx_tensors(onnx_path, images.cpu().numpy())
    overrides: dict[str, list[dict[str, Any]]] = {}
    matched = 0
    for path, value in floats.items():
        observer = model.get_submodule(path + ".activation_post_process")
        lo, hi = float(observer.get_buffer("min_val")), float(observer.get_buffer("max_val"))
        tol = 1e-3 * max(1.0, float(np.abs(value).max()))
        names = [n for n, t in tensors.items() if t.shape == value.shape and np.allclose(t, value, rtol=1e-3, atol=tol)]
        matched += bool(names)
        for name in names:
            overrides[name] = [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
    return overrides, matched
