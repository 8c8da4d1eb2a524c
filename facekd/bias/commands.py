"""CLI of the data-bias area: `facekd density`, `facekd uniformity`, `facekd resample` on an EmbeddingCache.

Angles take a unit (`12deg`, `0.21rad`) or `auto` (the bandwidth rule, Eq. 5-7, on the cache's
labels). `facekd density` shards its query rows across ranks when launched by torchrun; rank 0
writes the artifact.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import typer

_BW_HELP = "Kernel bandwidth with a unit (12deg, 0.21rad) or 'auto' for the bandwidth rule (Eq. 5-7)."


def _open(cache: Path):
    from facekd.embed import EmbeddingCache

    c = EmbeddingCache.open(cache)
    if len(c) == 0:
        raise ValueError(f"{cache}: the embedding cache is empty (0 rows)")
    c.check_rows()
    return c


def _bandwidth(value: str, cache) -> float:
    from facekd.bias.bandwidth import bandwidth_rule
    from facekd.utils import parse_angle

    if value.strip().lower() != "auto":
        return parse_angle(value)
    res = bandwidth_rule(cache.embeddings, cache.labels)
    typer.echo(
        f"bandwidth rule (Eq. 5-7): h = {res.degrees:.2f}deg from {res.n_used} classes "
        f"({res.n_skipped} skipped: < 2 images)"
    )
    return res.bandwidth


def _kde_options(method: str, k: int, index: str, dtype: str, device: str) -> dict:
    if method == "knn":
        return {"k": k, "index": index}
    if method == "exact":
        return {"dtype": dtype, "device": device}
    return {"device": device}


def density(
    cache: Path = typer.Argument(..., help="Embedding cache directory (facekd.embed)."),
    bandwidth: str = typer.Option("12deg", help=_BW_HELP),
    method: str = typer.Option("auto", help="exact | knn | auto (exact up to 300k rows on CPU)."),
    k: int = typer.Option(256, help="knn: neighbours per point."),
    index: str = typer.Option("flat", help="knn: FAISS index, flat (exact) or ivf."),
    dtype: str = typer.Option("float32", help="exact: float32 | float64 | tf32 (GPU) | bf16 (GPU)."),
    device: str = typer.Option("cpu", help="exact: torch device (cpu, cuda)."),
    list_path: Path | None = typer.Option(None, "--list", help="Weight by a sample list (.npy int64), Eq. 9."),
    out: Path = typer.Option(Path("density.npy"), help="Output .npy: float64 (N,) densities."),
) -> None:
    """Angular KDE of every cached embedding (Eq. 3, 8, 9); writes density.npy and a truncation bound."""
    from facekd import dist
    from facekd.bias.kde import angular_kde, list_weights
    from facekd.utils import atomic_paths, require_writable

    dist.init_from_env()
    bound = out.with_name(out.stem + "_bound.npy")
    c = _open(cache)
    require_writable(out, 8 * len(c) + 128, 8 * len(c) + 128)  # both float64 (N,) .npy files, before the KDE
    h = _bandwidth(bandwidth, c)
    w = list_weights(_load_list(list_path, len(c)), len(c)) if list_path is not None else None
    res = angular_kde(c.embeddings, h, w, method, return_result=True, **_kde_options(method, k, index, dtype, device))
    if dist.is_main():
        with atomic_paths(out, bound) as (tmp_density, tmp_bound):  # both files or neither
            np.save(tmp_density, res.density)
            np.save(tmp_bound, res.truncation_bound)
        q = np.percentile(res.density, [0, 50, 100])
        typer.echo(
            f"density ({res.method}, h={math.degrees(h):.2f}deg, {len(c)} x {c.embeddings.shape[1]}"
            f"{', weighted by ' + str(list_path) if w is not None else ''}): "
            f"min {q[0]:.4g} median {q[1]:.4g} max {q[2]:.4g}; "
            f"max truncation bound {res.truncation_bound.max():.3g}\nwrote {out}"
        )


def _load_list(path: Path, n: int) -> np.ndarray:
    from facekd.utils import load_npy

    arr = load_npy(path, "sample list")
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: expected a 1-D integer array of dataset indices, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{path}: indices must lie in [0, {n}) (the cache's rows), got [{arr.min()}, {arr.max()}]")
    return arr


def uniformity_cmd(
    cache: Path = typer.Argument(..., help="Embedding cache directory (facekd.embed)."),
    bandwidth: str = typer.Option("12deg", help=_BW_HELP),
    list_path: Path | None = typer.Option(None, "--list", help="Sample list (.npy int64); default: the dataset."),
    method: str = typer.Option("auto", help="exact | knn | auto."),
    out: Path | None = typer.Option(None, help="Also write the result as JSON."),
) -> None:
    """Uniformity (Eq. 4, 9) of the dataset or of a sample list, in nats and normalised by log N."""
    from facekd.bias.kde import list_weights
    from facekd.bias.uniformity import uniformity
    from facekd.utils import save_json

    c = _open(cache)
    h = _bandwidth(bandwidth, c)
    w = list_weights(_load_list(list_path, len(c)), len(c)) if list_path is not None else None
    res = uniformity(c.embeddings, h, w, method)
    what = f"list {list_path}" if list_path is not None else "dataset"
    typer.echo(
        f"uniformity of {what} over {res.n} points (h={math.degrees(h):.2f}deg): "
        f"U = {res.uniformity:.6f} nats, U/log N = {res.normalized:.6f}"
    )
    if out is not None:
        save_json(
            out,
            {
                "uniformity": res.uniformity,
                "normalized": res.normalized,
                "n": res.n,
                "bandwidth_rad": res.bandwidth,
                "list": str(list_path) if list_path else None,
            },
        )
        typer.echo(f"wrote {out}")


def resample(
    cache: Path = typer.Argument(..., help="Embedding cache directory (facekd.embed)."),
    method: str = typer.Option(..., help="intrinsic | extrinsic | usi | uniform."),
    out: Path = typer.Option(Path("samples.npy"), help="Output .npy: int64 sample list."),
    bandwidth: str = typer.Option("12deg", help="intrinsic: " + _BW_HELP),
    num: int | None = typer.Option(None, help="Draws (default: the dataset size, one epoch)."),
    seed: int = typer.Option(0, help="Random seed (the list is a deterministic function of it)."),
) -> None:
    """Write one epoch's sample list (dataset indices) for IndexListSampler."""
    from facekd.bias.samplers import METHODS, epoch_fn
    from facekd.utils import save_npy

    if method not in METHODS:
        raise typer.BadParameter(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    c = _open(cache)
    h = _bandwidth(bandwidth, c) if method == "intrinsic" else math.radians(12)
    samples = epoch_fn(method, embeddings=c.embeddings, labels=c.labels, n=len(c), num=num, seed=seed, bandwidth=h)(0)
    save_npy(out, samples)
    counts = np.bincount(samples, minlength=len(c))
    typer.echo(
        f"{method} sampling (seed {seed}{f', h={math.degrees(h):.2f}deg' if method == 'intrinsic' else ''}): "
        f"{samples.size} draws over {len(c)} images; {int((counts > 0).sum())} distinct, "
        f"max {counts.max()} draws of one image\nwrote {out}"
    )


def register(app: typer.Typer) -> None:
    """Add `density`, `uniformity` and `resample` to the facekd app."""
    app.command("density")(density)
    app.command("uniformity")(uniformity_cmd)
    app.command("resample")(resample)
