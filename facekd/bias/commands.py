"""CLI of the data-bias area: `facekd density`, `facekd uniformity`, `facekd resample` on an EmbeddingCache.

Angles take a unit in (0°, 180°] (`12deg`, `0.21rad`) or `auto` (the bandwidth rule, Eq. 5-7, on
the cache's labels). Options are validated by the same schemas as a run config's: the density
options by `facekd.bias.kde.DensityOptions`, a sampler's by its module in `facekd.bias.samplers`.
`facekd density` and `facekd resample` share their work across ranks when launched by torchrun;
rank 0 writes the artifact.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import typer

_BW_HELP = "Kernel bandwidth with a unit in (0deg, 180deg] (12deg, 0.21rad) or 'auto' for the rule (Eq. 5-7)."
_THREADS_HELP = "CPU threads for torch and FAISS (default: their own defaults)."


def _open(cache: Path):
    from facekd.embed import EmbeddingCache

    c = EmbeddingCache.open(cache)
    if len(c) == 0:
        raise ValueError(f"{cache}: the embedding cache is empty (0 rows)")
    c.check_rows()
    return c


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def _bandwidth(value: str, cache) -> float:
    from facekd.bias.bandwidth import resolve_bandwidth

    h, rule = resolve_bandwidth(value, cache.embeddings, cache.labels)
    if rule is not None:
        _echo_rule(rule)
    return h


def _echo_rule(rule) -> None:
    typer.echo(
        f"bandwidth rule (Eq. 5-7): h = {rule.degrees:.2f}deg from {rule.n_used} classes "
        f"({rule.n_skipped} skipped: < 2 images)"
    )


def density(
    cache: Path = typer.Argument(..., help="Embedding cache directory (facekd.embed)."),
    bandwidth: str = typer.Option("12deg", help=_BW_HELP),
    method: str = typer.Option("auto", help="exact | knn | auto (exact up to 300k rows on CPU, any N on GPU)."),
    device: str = typer.Option("auto", help="exact: torch device (auto: CUDA when available, cpu, cuda)."),
    dtype: str = typer.Option("auto", help="exact: auto (tf32 on GPU) | float32 | float64 | tf32 | bf16 (GPU)."),
    truncate_tol: float = typer.Option(1e-4, help="Pairs whose kernel is below tol/N are skipped (CPU)."),
    k: int = typer.Option(256, help="knn flat: neighbours per point."),
    index: str | None = typer.Option(None, help="knn: FAISS flat (exact neighbours) or ivf (default for auto)."),
    nlist: int | None = typer.Option(None, help="knn ivf, kmeans cells: how many (default N/100)."),
    nprobe: int = typer.Option(8, help="knn ivf: cells each point sums over."),
    cells: str = typer.Option("identity", help="knn ivf: identity (cells follow the labels) or kmeans."),
    cell_max: int = typer.Option(256, help="knn ivf, identity cells: larger identities are split by k-means."),
    refine_cos: float | None = typer.Option(
        None, help="knn ivf, kmeans cells: best-centroid cosine below which a point counts as unrepresented."
    ),
    list_path: Path | None = typer.Option(None, "--list", help="Weight by a sample list (.npy int64), Eq. 9."),
    out: Path = typer.Option(Path("density.npy"), help="Output .npy: float64 (N,) densities."),
    threads: int | None = typer.Option(None, min=1, help=_THREADS_HELP),
) -> None:
    """Angular KDE of every cached embedding (Eq. 3, 8, 9); writes density.npy and a truncation bound."""
    from facekd import dist
    from facekd.bias.kde import DensityOptions, angular_kde, list_weights
    from facekd.bias.samplers.file import load_sample_list
    from facekd.utils import atomic_paths, require_writable

    _set_threads(threads)
    raw = {"method": method, "device": device, "dtype": dtype, "truncate_tol": truncate_tol, "k": k, "index": index}
    raw.update(nlist=nlist, nprobe=nprobe, cells=cells, cell_max=cell_max, refine_cos=refine_cos)
    opts = _validated(DensityOptions, raw, "density")
    dist.init_from_env()
    bound = out.with_name(out.stem + "_bound.npy")
    c = _open(cache)
    require_writable(out, 8 * len(c) + 128, 8 * len(c) + 128)  # both float64 (N,) .npy files, before the KDE
    h = _bandwidth(bandwidth, c)
    w = list_weights(load_sample_list(list_path, len(c)), len(c)) if list_path is not None else None
    res = angular_kde(c.embeddings, h, w, return_result=True, **opts.kwargs(len(c), c.labels))
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


def _validated(schema, raw: dict, what: str):
    """`schema` validated from `raw`; a one-line ValueError naming the option otherwise."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        parts = []
        for x in e.errors():
            msg = x["msg"].removeprefix("Value error, ")
            parts.append(f"--{'.'.join(map(str, x['loc'])).replace('_', '-')}: {msg}" if x["loc"] else msg)
        raise ValueError(f"{what}: " + "; ".join(parts)) from None


def uniformity_cmd(
    cache: Path = typer.Argument(..., help="Embedding cache directory (facekd.embed)."),
    bandwidth: str = typer.Option("12deg", help=_BW_HELP),
    list_path: Path | None = typer.Option(None, "--list", help="Sample list (.npy int64); default: the dataset."),
    method: str = typer.Option("auto", help="exact | knn | auto (exact up to 300k rows on CPU)."),
    out: Path | None = typer.Option(None, help="Also write the result as JSON."),
    threads: int | None = typer.Option(None, min=1, help=_THREADS_HELP),
) -> None:
    """Uniformity (Eq. 4, 9) of the dataset or of a sample list, in nats and normalised by log N."""
    from facekd.bias.kde import DensityOptions, list_weights
    from facekd.bias.samplers.file import load_sample_list
    from facekd.bias.uniformity import uniformity
    from facekd.utils import save_json

    _set_threads(threads)
    opts = _validated(DensityOptions, {"method": method}, "uniformity")
    c = _open(cache)
    h = _bandwidth(bandwidth, c)
    w = list_weights(load_sample_list(list_path, len(c)), len(c)) if list_path is not None else None
    res = uniformity(c.embeddings, h, w, **opts.kwargs(len(c), c.labels))
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


def _sampler_options(bandwidth: str | None, num: int | None, option: list[str]) -> dict:
    """Raw sampler options from the shorthand flags and `--option key=value` (value read as YAML)."""
    from facekd.config import apply_overrides

    raw: dict[str, object] = {} if bandwidth is None else {"bandwidth": bandwidth}
    if num is not None:
        raw["num"] = num
    return apply_overrides(raw, option)


def resample(
    cache: Path = typer.Argument(..., help="Embedding cache directory (facekd.embed)."),
    method: str = typer.Option(..., help="A sampler: intrinsic | extrinsic | usi | uniform | pk."),
    out: Path = typer.Option(Path("samples.npy"), help="Output .npy: int64 sample list."),
    bandwidth: str | None = typer.Option(None, help="intrinsic: " + _BW_HELP + " Default 12deg."),
    num: int | None = typer.Option(None, help="Draws (default: the dataset size, one epoch)."),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Sampler option key=value, as in a config's sampler.options (e.g. search=hnsw)."
    ),
    seed: int = typer.Option(0, help="Random seed (the list is a deterministic function of seed and epoch)."),
    epoch: int = typer.Option(0, min=0, help="Which epoch's list (a training run draws with seed + epoch)."),
    threads: int | None = typer.Option(None, min=1, help=_THREADS_HELP),
) -> None:
    """Write one epoch's sample list (dataset indices), as a training run with this sampler draws it."""
    from facekd import dist
    from facekd.bias.sampling import SamplerConfig, build_sampler
    from facekd.utils import save_npy

    _set_threads(threads)
    cfg = _validated(SamplerConfig, {"name": method, "options": _sampler_options(bandwidth, num, option)}, "resample")
    dist.init_from_env()
    c = _open(cache)
    sampler = build_sampler(cfg, c, seed, c.embeddings, progress=True)
    rule = getattr(sampler, "rule", None)  # the bandwidth rule's result, when bandwidth is auto
    if rule is not None:
        _echo_rule(rule)
    samples = sampler.indices(epoch)
    if not dist.is_main():
        return
    save_npy(out, samples)
    counts = np.bincount(samples, minlength=len(c))
    options = sampler.describe()["options"]
    h = options.get("bandwidth")
    typer.echo(
        f"{method} sampling (seed {seed}, epoch {epoch}{f', h={math.degrees(h):.2f}deg' if h else ''}): "
        f"{samples.size} draws over {len(c)} images; {int((counts > 0).sum())} distinct, "
        f"max {counts.max()} draws of one image\nwrote {out}"
    )


def register(app: typer.Typer) -> None:
    """Add `density`, `uniformity` and `resample` to the facekd app."""
    app.command("density")(density)
    app.command("uniformity")(uniformity_cmd)
    app.command("resample")(resample)
