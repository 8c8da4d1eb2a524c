"""Hyper-parameters chosen on the validation split, never on the test pairs.

`select(ctx, name, values, config)` trains one student per grid value and selection seed
(`settings.grid.seeds`) on the training split, scores each on the SynthFaces *validation* pairs
(identities disjoint from train and test) by strict TAR@FAR=1e-3, averages over the selection
seeds and keeps the best value (ties: the first listed). The result is stored in
`run_dir/selection/<name>.json` under the digest of everything it depends on (every grid run's
content key, the validation data, the metric), and reused while that holds: a grid is trained and
scored once. The grid runs are ordinary runs of the store, so the run of the chosen value at a
selection seed is the same run the main table then reports for that seed (on the test pairs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from facekd.config import RunConfig
from facekd.demo.compare import student_metrics
from facekd.demo.context import DemoContext
from facekd.refo.stages import TrainedRun, digest
from facekd.utils import save_json

__all__ = ["METRIC", "SELECTION_LABEL", "Scorer", "grid_jobs", "select", "select_if_ready", "synthfaces_scorer"]

METRIC = "TAR@1e-03"
SELECTION_LABEL = "selection/"  # the label of every grid run starts with it


@dataclass(frozen=True)
class Scorer:
    """How a grid run is scored on validation data: `score(run)` (higher is better), described by
    `metric` and `data` (what the stored result's digest covers)."""

    metric: str
    data: str
    score: Callable[[TrainedRun], float]


def synthfaces_scorer(ctx: DemoContext) -> Scorer:
    """Strict TAR@FAR=1e-3 on the SynthFaces validation pairs."""
    val = ctx.split("val")[0]
    return Scorer(
        f"validation {METRIC}",
        f"synthfaces-val:{val.fingerprint()}:flip={ctx.settings.eval_flip}",
        lambda run: student_metrics(ctx.evaluate(run.model, "val"))[METRIC],
    )


def _key(ctx: DemoContext, name: str, grid: list[tuple[float, int, RunConfig]], scorer: Scorer) -> str:
    return digest(
        {
            "name": name,
            "runs": [[v, s, ctx.store.run_key(cfg)] for v, s, cfg in grid],
            "data": scorer.data,
            "metric": scorer.metric,
        }
    )


def select(
    ctx: DemoContext,
    name: str,
    values: Sequence[float],
    config: Callable[[float, int], RunConfig],
    label: str = "",
    scorer: Scorer | None = None,
) -> dict:
    """The best of `values` on validation data for the student `config(value, seed)`.

    scorer: default `synthfaces_scorer` (TAR@1e-3 on the SynthFaces validation pairs).
    Returns {"name", "values", "seeds", "metric", "scores" (value → [score per seed]), "mean"
    (value → mean score), "best"}. A one-value grid is returned as chosen without training.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"selection {name!r}: empty grid")
    seeds = list(ctx.settings.grid.seeds)
    if len(values) == 1:
        return {
            "name": name,
            "values": values,
            "seeds": seeds,
            "metric": "–",
            "scores": {},
            "mean": {},
            "best": values[0],
        }
    scorer = scorer or synthfaces_scorer(ctx)
    result: dict = {"name": name, "values": values, "seeds": seeds, "metric": scorer.metric}
    grid = [(v, s, config(v, s)) for v in values for s in seeds]
    key = _key(ctx, name, grid, scorer)
    path = ctx.run_dir / "selection" / f"{name}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            ctx.log(f"selection {name}: stored result reused (best {saved['result']['best']:g})")
            return saved["result"]
    runs = ctx.train_many(grid_jobs(ctx, name, values, config, label), splits=("val", "test"))
    scores: dict[str, list[float]] = {f"{v:g}": [] for v in values}
    for (v, _, _), run in zip(grid, runs):
        scores[f"{v:g}"].append(float(scorer.score(run)))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    best = max(values, key=lambda v: (mean[f"{v:g}"], -values.index(v)))
    result |= {"scores": scores, "mean": mean, "best": best}
    save_json(path, {"key": key, "result": result})
    ctx.log(f"selection {name}: best {best:g} ({scorer.metric}: {mean})")
    return result


def grid_jobs(
    ctx: DemoContext, name: str, values: Sequence[float], config: Callable[[float, int], RunConfig], label: str = ""
) -> list[tuple[RunConfig, str]]:
    """The (config, label) of every run of a grid (none for a one-value grid, which is not searched)."""
    if len(values) < 2:
        return []
    return [
        (config(float(v), s), f"{SELECTION_LABEL}{label or name}/{v:g}/seed{s}")
        for v in values
        for s in ctx.settings.grid.seeds
    ]


def select_if_ready(
    ctx: DemoContext,
    name: str,
    values: Sequence[float],
    config: Callable[[float, int], RunConfig],
    scorer: Scorer | None = None,
) -> dict | None:
    """`select(...)` when every run of the grid is finished (scoring only, no training), else None."""
    if not all(ctx.ready(cfg) for cfg, _ in grid_jobs(ctx, name, values, config)):
        return None
    return select(ctx, name, values, config, scorer=scorer)
