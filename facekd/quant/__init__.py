"""INT8 deployment of face students: post-training quantization of an exported ONNX graph with
onnxruntime (`ptq`), quantization-aware distillation with torch.ao fake quantization (`qat`), the
fp32 / int8 comparison on the same pairs (`measure`), the model card (`card`) and the
`facekd quantize` / `facekd qat` commands (`commands`).

This package sits above `facekd.onnx` (it quantizes and checks exported graphs).
"""
