"""CLI of the distillation losses: `facekd pad-variance RUN [DATA]`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import typer

SUMMARY_KEYS = ("n", "log_sigma2_std", "spearman_sigma2_gap", "mean_sigma2", "mean_gap", "mean_effective_weight")


def _data_config(data: Path | None, run_cfg):
    """The data block of `data` (a YAML file holding a `data:` block or the block itself), else the run's."""
    from pydantic import ValidationError

    from facekd.config import ConfigError, DataConfig, format_validation_error, read_yaml_mapping

    if data is None:
        return run_cfg.data
    raw = read_yaml_mapping(data)
    raw = raw.get("data", raw)
    try:
        return DataConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(data))) from None


def _write(out: Path, samples: dict[str, np.ndarray], stats: dict) -> None:
    from facekd.utils import atomic_path, save_json

    out.mkdir(parents=True, exist_ok=True)
    columns = ("labels", "gap", "sigma2", "log_sigma2", "effective_weight")
    with atomic_path(out / "per_sample.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label", "gap", "sigma2", "log_sigma2", "effective_weight"])
        for i, values in enumerate(zip(*(samples[c] for c in columns))):
            w.writerow([i, int(values[0]), *(f"{float(v):.6g}" for v in values[1:])])
    save_json(out / "summary.json", stats)


def pad_variance(
    run: Path = typer.Argument(..., help="Run directory of a finished training run with weighting: pad."),
    data: Path | None = typer.Argument(
        None, help="YAML with a data block to analyse (default: the run's training data; a cached teacher needs it)."
    ),
    out: Path | None = typer.Option(None, help="Output directory (default RUN/pad_variance)."),
    batch_size: int = typer.Option(256, min=1),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
) -> None:
    """Per-sample PAD variance σ² of a trained run over a dataset: per_sample.csv (row, label, gap,
    σ², ln σ², effective weight) and summary.json (spread of ln σ², Spearman with the gap and the
    teacher's errors, mean σ² by group / nuisance / flag)."""
    import torch

    from facekd.build import run_training
    from facekd.config import load_config
    from facekd.data.spec import build_dataset
    from facekd.losses.pad_variance import pad_run_statistics, per_sample_variance

    if threads:
        torch.set_num_threads(threads)
    config = run / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run}: no config.yaml (not a facekd run directory)")
    cfg = load_config(config).model_copy(update={"run_dir": run})
    if not (run / "done").exists():
        raise ValueError(f"{run}: the run is not finished (no 'done' marker)")
    task = run_training(cfg, resume=True, progress=False)
    dataset = build_dataset(_data_config(data, cfg))
    samples = per_sample_variance(task, dataset, batch_size)
    stats = pad_run_statistics(samples, dataset)
    target = out or run / "pad_variance"
    _write(target, samples, stats)
    typer.echo(json.dumps({k: stats[k] for k in SUMMARY_KEYS}, indent=1))
    typer.echo(f"written: {target / 'per_sample.csv'}, {target / 'summary.json'}")


def register(app: typer.Typer) -> None:
    app.command("pad-variance")(pad_variance)
