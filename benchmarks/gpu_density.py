"""Exact density and Extrinsic Sampling at MS1MV3 size on one GPU, with their errors.

    python benchmarks/gpu_density.py --out DIR            # on a CUDA machine: N = 5.2M, d = 512
    python benchmarks/gpu_density.py --smoke --out DIR    # N = 3,000 on the CPU: the same code path, small

Writes DIR/gpu_density.json and DIR/gpu_density.md after every step, so a run that is cut short
still leaves what it measured. Needs PyTorch only (no FAISS, no network). Steps:
1. clustered synthetic embeddings (the model of benchmarks/density.py: long-tailed identity
   sizes, 20-40° within an identity, 5 % hard images) drawn on the device, in random row order;
2. the dense epilogue in place ("dense") against the torch.compile'd one ("compiled") at
   min(N, 1M) rows, tf32; the faster one is used below;
3. exact density at N in tf32 and in bf16 (float32 cosines), timed; their relative error
   against float64 products on the first 2,048 rows (a random sample);
4. Extrinsic Sampling at N: one epoch of the exact torch search in tf32 and in bf16, timed, and
   the share of directions whose row differs from float32 products on the first 65,536.
Bars (of the scale work): density at 5.2M ≤ 120 s in tf32 with max relative error ≤ 2e-3;
Extrinsic Sampling at 5.2M ≤ 60 s.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from facekd.bias.kde import kde_exact
from facekd.bias.nearest import QUERY_BLOCK, TorchSearch, nearest_to_random_directions, random_directions

H = math.radians(12)
CHECK_ROWS = 2048


def clustered_on_device(n: int, d: int, device: torch.device, seed: int = 0) -> np.ndarray:
    """float32 (n, d) unit rows: identities of 2-200 images (Pareto sizes), 20-40° from their
    centre, 5 % hard images at twice the spread; rows in random order. Drawn with torch on
    `device` (minutes on a CPU at 5.2M), returned on the host."""
    g = torch.Generator(device=device).manual_seed(seed)
    u = torch.rand(n, generator=g, device=device)
    sizes = ((u.pow(-1 / 1.2) - 1) * 10 + 2).long().clamp(2, 200)  # Pareto(1.2) by inversion
    sizes = sizes[: int(torch.searchsorted(sizes.cumsum(0), torch.tensor(n, device=device))) + 1]
    labels = torch.repeat_interleave(torch.arange(sizes.numel(), device=device), sizes)[:n]
    centres = torch.nn.functional.normalize(torch.randn(sizes.numel(), d, generator=g, device=device), dim=1)
    spread = 0.3 + 0.3 * torch.rand(sizes.numel(), generator=g, device=device)
    hard = torch.where(torch.rand(n, generator=g, device=device) < 0.05, 2.0, 1.0)
    x = torch.empty(n, d, device=device)
    for s in range(0, n, 1 << 20):  # in slices: the noise of all rows at once would double the memory
        e = min(s + (1 << 20), n)
        noise = torch.randn(e - s, d, generator=g, device=device) / math.sqrt(d)
        x[s:e] = centres[labels[s:e]] + (spread[labels[s:e]] * hard[s:e])[:, None] * noise
    x = torch.nn.functional.normalize(x, dim=1)[torch.randperm(n, generator=g, device=device)]
    return x.cpu().numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


class Report:
    """Results written to DIR after every step (JSON and a markdown table)."""

    def __init__(self, out: Path, meta: dict):
        self.out, self.meta, self.rows = out, meta, []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, step: str, seconds: float, note: str = "", **values) -> None:
        self.rows.append({"step": step, "seconds": round(seconds, 3), "note": note, **values})
        print(f"{step:<48}{seconds:>9.1f} s  {note}", flush=True)
        (self.out / "gpu_density.json").write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))
        lines = [f"{k}: {v}  " for k, v in self.meta.items()]
        lines += ["", "| step | seconds | result |", "|---|---|---|"]
        lines += [f"| {r['step']} | {r['seconds']:.1f} | {r['note']} |" for r in self.rows]
        (self.out / "gpu_density.md").write_text("\n".join(lines) + "\n")


def density_steps(x: np.ndarray, device: torch.device, report: Report, dtypes: list[str]) -> None:
    n = x.shape[0]

    def density(rows: np.ndarray, dtype: str, epilogue: str, check: int | None = None):
        span = None if check is None else (0, check)
        return kde_exact(rows, H, rows=span, device=device, dtype=dtype, epilogue=epilogue, progress=False)

    epilogue = "dense"
    if device.type == "cuda":
        small = x[: min(n, 1_000_000)]
        times = {}
        for ep in ("dense", "compiled"):
            density(small[:4096], "tf32", ep)  # warm-up (and compilation)
            _, times[ep] = timed(lambda ep=ep: density(small, "tf32", ep), device)
            report.add(f"exact density, {small.shape[0]:,} rows, tf32, epilogue {ep}", times[ep])
        epilogue = min(times, key=lambda k: times[k])
    check = min(CHECK_ROWS, n)
    ref, t = timed(lambda: density(x, "float64", epilogue, check), device)
    report.add(f"float64 reference, {check:,} rows x {n:,}", t)
    for dtype in dtypes:
        res, t = timed(lambda dtype=dtype: density(x, dtype, epilogue), device)
        rel = np.abs(res.density[:check] - ref.density) / ref.density
        note = f"rel err on {check:,} rows: median {np.median(rel):.1e}, max {rel.max():.1e}; epilogue {epilogue}"
        report.add(f"exact density, {n:,} rows, {dtype}", t, note, max_rel_err=float(rel.max()))


def extrinsic_steps(x: np.ndarray, device: torch.device, report: Report, dtypes: list[str]) -> None:
    n, d = x.shape
    block = random_directions(0, 0, min(QUERY_BLOCK, n), d)
    reference = TorchSearch(x, device, "float32").search(block)
    for dtype in dtypes:
        search = TorchSearch(x, device, dtype)
        rows, t = timed(lambda s=search: nearest_to_random_directions(s, d, n, 0), device)
        flips = float((rows[: block.shape[0]] != reference).mean())
        note = f"{flips:.2%} of {block.shape[0]:,} directions on another row than with float32 products"
        report.add(f"Extrinsic Sampling, one epoch of {n:,}, {dtype}", t, note, flips=flips)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=5_200_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--smoke", action="store_true", help="N = 3,000 on the CPU (float32): checks the script runs")
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    n = 3000 if args.smoke else args.n
    dtypes = ["tf32", "bf16"] if device.type == "cuda" else ["float32"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = Report(args.out, {"device": name, "torch": torch.__version__, "n": n, "d": args.d, "h_deg": 12})
    x, t = timed(lambda: clustered_on_device(n, args.d, device), device)
    report.add(f"clustered embeddings, {n:,} x {args.d}", t)
    density_steps(x, device, report, dtypes)
    extrinsic_steps(x, device, report, dtypes)


if __name__ == "__main__":
    main()
