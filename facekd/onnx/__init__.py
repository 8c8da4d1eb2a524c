"""ONNX: export in the ICCV21-MFR / insightface model-zoo format (`export`), a re-implementation of
the MFR submission checker (`check`), `OnnxTeacher` to distil from a model-zoo ONNX file
(`teacher`), and the `facekd export` / `facekd check-onnx` commands (`commands`).

This package sits above `facekd.models` (it exports and loads backbones); nothing below imports it.
"""

from facekd.onnx.check import OnnxCheckReport, check_onnx, detect_pixel_norm, estimate_flops
from facekd.onnx.export import export_onnx
from facekd.onnx.teacher import OnnxTeacher

__all__ = ["OnnxCheckReport", "OnnxTeacher", "check_onnx", "detect_pixel_norm", "estimate_flops", "export_onnx"]
