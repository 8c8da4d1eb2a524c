"""CLI commands of the ReFO area: `facekd intrinsic-dim CACHE` and `facekd refo CONFIG [key=value ...]`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from facekd.config import ConfigError, DataConfig, apply_overrides, format_validation_error, read_yaml_mapping
from facekd.refo.config import RefoConfig
from facekd.refo.pipeline import run_refo
from facekd.utils import atomic_path, save_json


def intrinsic_dim(
    cache: Path = typer.Argument(..., help="EmbeddingCache directory (or an .npy (N, d) file)."),
    subset: str = typer.Option("0.01", help="Rows measured: a fraction (0.01), a percentage (1%) or a count (5000)."),
    reps: int = typer.Option(20, help="Repetitions, each on a random `fraction` of the subset."),
    fraction: float = typer.Option(0.9, help="Share of the subset used in each repetition."),
    seed: int = typer.Option(0, help="Seed of the subset and of the repetitions (same seed → same images)."),
    normalize: bool = typer.Option(True, help="L2-normalise the embeddings first (the paper does)."),
    discard_fraction: float = typer.Option(0.1, help="Share of the largest ratios r2/r1 left out of the fit."),
    out: Path | None = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """TwoNN intrinsic dimension of an embedding cache (ReFO supplementary protocol): mean ± std."""
    import numpy as np

    from facekd.refo.intrinsic import intrinsic_dimension, parse_subset

    if cache.is_dir():
        from facekd.embed import EmbeddingCache

        emb = EmbeddingCache.open(cache).embeddings
    elif cache.suffix == ".npy" and cache.is_file():
        emb = np.load(cache, mmap_mode="r")
    else:
        raise FileNotFoundError(f"{cache}: expected an embedding cache directory or an .npy file")
    res = intrinsic_dimension(
        emb,
        subset=parse_subset(subset),
        reps=reps,
        fraction=fraction,
        seed=seed,
        normalize=normalize,
        discard_fraction=discard_fraction,
    )
    typer.echo(
        f"intrinsic dimension {res.mean:.3f} ± {res.std:.3f} (TwoNN, {reps} reps × {res.n_per_rep} points; "
        f"subset {res.n_subset} of {emb.shape[0]} rows, {res.n_duplicates} duplicates removed)"
    )
    if out is not None:
        save_json(out, res.to_dict() | {"cache": str(cache)})


class RefoRunFile(BaseModel):
    """The YAML of `facekd refo`: where to run, the data, and `RefoConfig` (section `refo`).

    data: D1, a `facekd.config.DataConfig` (labelled). distill_data: D2 for the feature-only
    student (its labels are never read); default: D1.
    """

    model_config = ConfigDict(extra="forbid")
    run_dir: str = "runs/refo"
    data: DataConfig = Field(default_factory=lambda: DataConfig.model_validate({}))
    distill_data: DataConfig | None = None
    refo: RefoConfig = Field(default_factory=lambda: RefoConfig.model_validate({}))


def load_refo_file(path: Path, overrides: Sequence[str] = ()) -> RefoRunFile:
    """Read, override (`key=value`, dotted keys) and validate a `facekd refo` YAML.

    Raises ConfigError, one line naming the file and the key.
    """
    try:
        return RefoRunFile.model_validate(apply_overrides(read_yaml_mapping(path), overrides))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None


def refo(
    config: Path = typer.Argument(..., help="YAML with run_dir, data, distill_data and refo sections."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. refo.beta2=2"),
    progress: bool = typer.Option(True, help="Progress bars."),
) -> None:
    """Run or resume ReFO / ReFO+ (Algorithm 1): proxy, embed, reverse distillation, embed, FO student.

    Finished stages are reused; a changed setting runs only the stages it changes."""
    cfg = load_refo_file(config, overrides or [])
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    res = run_refo(cfg.refo, run_dir, cfg.data, cfg.distill_data, progress=progress, log=typer.echo)
    for stage, record in res.stages.items():
        typer.echo(f"  {stage:14s} {record['seconds']:8.1f} s  {record['dir']}")


def register(app: typer.Typer) -> None:
    """Add `intrinsic-dim` and `refo` to the facekd app."""
    app.command("intrinsic-dim")(intrinsic_dim)
    app.command("refo")(refo)
