"""Growth with N of the methods that must run at MS1MV3 scale, measured in one run on the CPU.

    .venv/bin/python benchmarks/scale.py                   # every row
    .venv/bin/python benchmarks/scale.py --quick           # small sizes: a smoke run, exponents not meaningful
    .venv/bin/python benchmarks/scale.py --only extrinsic  # some rows
    .venv/bin/python benchmarks/scale.py --json scale.json # also write the results

Each row is a function registered with `@row`: it measures one method at two or more sizes and
returns a `Row`; adding a measurement is adding such a function. The growth exponent is the
least-squares slope of log(CPU seconds) on log(size). The measure is the CPU time of this process
(`time.process_time`; torch and FAISS run one thread), because other processes may share the
machine; the wall time is printed beside it. Data are the clustered embeddings of
benchmarks/density.py (d = 512, identities of 2-200 images) with 5 % twin identities (the same
person under two labels). Bars: Extrinsic Sampling from 20k to 80k and IVF density from 250k to
1M grow with exponent ≤ 1.3; the density's maximum relative error on 2,000 random rows ≤ 1e-2.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
import torch
from density import D, H, clustered_embeddings

from facekd.bias import list_weights, uniformity
from facekd.bias.kde import kde_exact, kde_knn
from facekd.bias.nearest import FlatSearch, nearest_to_random_directions, random_directions
from facekd.bias.samplers import intrinsic_sampling
from facekd.bias.sampling import SamplerConfig, build_sampler
from facekd.data.sampler import IndexListSampler

TWINS = 0.05


@dataclass
class Row:
    """One measured method: CPU and wall seconds at each size, the exponent bar, notes."""

    name: str
    sizes: list[int]
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    bar: float | None = None
    notes: list[str] = field(default_factory=list)
    unit: str = "N"

    @property
    def exponent(self) -> float:
        return float(np.polyfit(np.log(self.sizes), np.log(self.cpu), 1)[0])


ROWS: dict[str, Callable[[bool], Row]] = {}


def row(name: str):
    """Register a row function `fn(quick) -> Row` under `name`."""

    def deco(fn):
        ROWS[name] = fn
        return fn

    return deco


def timed(fn):
    """(fn(), CPU seconds of this process, wall seconds)."""
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


class _Data:
    """What build_sampler reads from a dataset: len() and labels."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.size


def _recall(x: np.ndarray, got: np.ndarray, seed: int, count: int = 4096) -> float:
    """Share of the first `count` directions of an epoch for which `got` is the exact nearest row."""
    count = min(count, got.size)
    exact = FlatSearch(x).search(random_directions(seed, 0, count, x.shape[1]))
    return float((got[:count] == exact).mean())


@row("extrinsic")
def extrinsic(quick: bool) -> Row:
    """Extrinsic Sampling, CPU search "ivf" (identity cells): building the search and one epoch."""
    r = Row("Extrinsic Sampling (ivf search), first epoch", [2000, 4000, 8000] if quick else [20_000, 40_000, 80_000])
    r.bar = 1.3
    for n in r.sizes:
        x, labels = clustered_embeddings(n, twins=TWINS, with_labels=True)
        cfg = SamplerConfig(name="extrinsic", options={"search": "ivf"})
        sampler = build_sampler(cfg, _Data(labels), 0, x, progress=False)
        got, c, w = timed(lambda s=sampler: s.indices(0))
        r.cpu.append(c)
        r.wall.append(w)
        r.notes.append(f"recall {_recall(x, got, 0):.3f} on {min(4096, n):,} directions")
        if n == r.sizes[0]:
            exact, ce, _ = timed(lambda x=x, n=n: nearest_to_random_directions(FlatSearch(x), D, n, 0))
            u = [uniformity(x, H, list_weights(s, n), progress=False).normalized for s in (exact, got)]
            r.notes[-1] += (
                f"; exact (FAISS flat) {ce:.1f} s CPU = {ce / c:.1f}x; list uniformity/log N "
                f"exact {u[0]:.5f}, ivf {u[1]:.5f}"
            )
    return r


@row("density")
def density(quick: bool) -> Row:
    """IS density, knn ivf over identity cells, against exact on 2,000 random rows at the largest N."""
    r = Row("IS density (knn ivf, identity cells)", [20_000, 80_000] if quick else [250_000, 1_000_000])
    r.bar = 1.3
    for n in r.sizes:
        x, labels = clustered_embeddings(n, twins=TWINS, with_labels=True)
        perm = np.random.default_rng(1).permutation(n)  # rows 0..1999 are then a random sample
        x, labels = x[perm], labels[perm]
        res, c, w = timed(lambda x=x, labels=labels: kde_knn(x, H, index="ivf", labels=labels, progress=False))
        r.cpu.append(c)
        r.wall.append(w)
        if n != r.sizes[-1]:
            r.notes.append("")
            continue
        check = min(2000, n)
        ref, ce, _ = timed(lambda x=x, check=check: kde_exact(x, H, rows=(0, check), progress=False))
        rel = np.abs(res.density[:check] - ref.density) / ref.density
        r.notes.append(
            f"rel err on {check} random rows: median {np.median(rel):.1e}, max {rel.max():.1e} (bar 1e-2); "
            f"exact extrapolated from them: {ce * n / check / c:.0f}x slower"
        )
    return r


@row("sampler")
def sampler(quick: bool) -> Row:
    """One epoch of the training side: Intrinsic Sampling's draws from a given density, then this
    rank's shard of the list (IndexListSampler, rank 0 of 8) as the DataLoader iterates it."""
    sizes = [100_000, 400_000] if quick else [1_000_000, 4_000_000]
    r = Row("Intrinsic Sampling draws + IndexListSampler epoch", sizes)
    for n in r.sizes:
        density = np.random.default_rng(0).uniform(1.0, 50.0, n)

        def epoch(density=density, n=n):
            draws = intrinsic_sampling(None, num=n, seed=1, density=density)
            loader = IndexListSampler(draws, rank=0, world_size=8, dataset_size=n)
            return sum(1 for _ in loader)

        _, c, w = timed(epoch)
        r.cpu.append(c)
        r.wall.append(w)
        r.notes.append("")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run, exponents not meaningful)")
    ap.add_argument("--only", nargs="+", choices=sorted(ROWS), help="run only these rows")
    ap.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    print(f"torch {torch.__version__}, faiss {faiss.__version__}, 1 thread; d={D}, h=12deg, {TWINS:.0%} twins")
    print(f"{'row':<52}{'size':>11}{'CPU s':>9}{'wall s':>9}  notes", flush=True)
    results = []
    t0 = time.perf_counter()
    for name in args.only or ROWS:
        r = ROWS[name](args.quick)
        for n, c, w, note in zip(r.sizes, r.cpu, r.wall, r.notes):
            print(f"{r.name:<52}{n:>11,}{c:>9.1f}{w:>9.1f}  {note}", flush=True)
        met = "" if r.bar is None else f" (bar <= {r.bar}: {'met' if r.exponent <= r.bar else 'NOT met'})"
        print(f"  growth exponent (CPU time, {r.sizes[0]:,} to {r.sizes[-1]:,}): {r.exponent:.2f}{met}", flush=True)
        results.append({**asdict(r), "exponent": r.exponent})
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
