"""facekd: knowledge distillation for face recognition that treats the training data as part of it.

Three papers, one toolkit (see README.md and docs/design.md):
data-bias rectification (`facekd.bias`), Prime-Aware Adaptive Distillation (`facekd.losses`),
ReFO / ReFO+ with TwoNN (`facekd.refo`, `facekd.refo.intrinsic`).
"""

__version__ = "0.1.0"
