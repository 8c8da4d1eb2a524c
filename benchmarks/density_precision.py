"""Accuracy of the exact KDE's GPU matmul precisions, emulated on this CPU.

    .venv/bin/python benchmarks/density_precision.py [--n 20000]

kde_exact(dtype="tf32" | "bf16") only changes how the cosine block is multiplied; the kernel is
then evaluated in float32 and summed in float64 as for float32. This script reproduces each
product's rounding on the CPU, runs the real row-sum code (facekd.bias.kde._exact_row_sums) on
it, and compares with float64 on the benchmark's clustered embeddings (d = 512, h = 12°):
- tf32: inputs rounded to TF32 (10-bit mantissa, nearest-even), float32 products and sums: what
  cuBLAS does with torch.backends.cuda.matmul.allow_tf32.
- bf16 -> fp32: inputs rounded to bf16, float32 products and sums, a float32 cosine (on CUDA
  torch.mm(a, b, out_dtype=torch.float32), what kde_exact uses).
- bf16 -> bf16: the same with the cosine rounded to bf16 (a plain torch.mm of bf16 tensors, run
  here on the CPU): the alternative kde_exact does not use.
Rounding is emulated exactly; the GPU's summation order differs, which float32 sums make
negligible next to input rounding. Not measured on a GPU (none was lent): see docs/bias.md.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from density import H, clustered_embeddings

from facekd.bias.kde import _cos_cut, _exact_row_sums
from facekd.bias.samplers import intrinsic_probabilities
from facekd.bias.uniformity import entropy_of_density


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest TF32 value (1 sign, 8 exponent, 10 mantissa bits; ties to even), as float32."""
    bits = x.contiguous().view(torch.int32)
    keep = 23 - 10
    bias = ((bits >> keep) & 1) + (1 << (keep - 1)) - 1  # round half to even on the dropped 13 bits
    return ((bits + bias) & ~((1 << keep) - 1)).view(torch.float32)


def densities(x: np.ndarray, variant: str) -> np.ndarray:
    """Row sums Σ_j K(θ_ij/h) (self included) with the products of `variant`. float64 (N,)."""
    n = x.shape[0]
    t = torch.from_numpy(x)
    ref = {
        "float64": t.double,
        "float32": lambda: t,
        "tf32": lambda: round_to_tf32(t),
        "bf16 -> bf16": t.bfloat16,
        "bf16 -> fp32": lambda: t.bfloat16().float(),
    }[variant]()
    return _exact_row_sums(ref, 0, n, H, _cos_cut(H, 1e-4, n), None, desc=variant).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    x = clustered_embeddings(args.n)
    ref = densities(x, "float64")
    u_ref = entropy_of_density(ref) / math.log(args.n)
    p_ref = intrinsic_probabilities(ref)
    print(f"N={args.n}, d={x.shape[1]}, h=12deg; errors against float64")
    header = f"{'products':<14}{'rel err median':>15}{'p99':>10}{'max':>10}"
    print(header + f"{'uniformity/logN':>17}{'IS p max rel':>14}{'IS TV':>10}")
    for variant in ("float32", "tf32", "bf16 -> fp32", "bf16 -> bf16"):
        got = densities(x, variant)
        rel = np.abs(got - ref) / ref
        p = intrinsic_probabilities(got)
        du = entropy_of_density(got) / math.log(args.n) - u_ref
        print(
            f"{variant:<14}{np.median(rel):>15.1e}{np.quantile(rel, 0.99):>10.1e}{rel.max():>10.1e}"
            f"{du:>+17.1e}{(np.abs(p - p_ref) / p_ref).max():>14.1e}{0.5 * np.abs(p - p_ref).sum():>10.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
