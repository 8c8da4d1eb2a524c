"""The demo's experiment registry: one `Experiment` per table or figure, registered by its paper's module.

Tiers are nested: "quick" ⊂ "default" ⊂ "full". An experiment registered with tier "default" runs
in the default and full demos; one with tier "full" only in the full demo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facekd.demo.settings import TIERS, Tier

if TYPE_CHECKING:
    from facekd.config import RunConfig
    from facekd.demo.context import DemoContext


@dataclass(frozen=True)
class Experiment:
    """One demo experiment.

    name: unique id, also the file name of its stored result (e.g. "spine.kd_baseline").
    tier: the smallest demo tier that runs it ("quick" runs everywhere, "full" only in --full).
    run: ctx → JSON-able dict (numbers, lists, dicts, strings).
    report: (ctx, result) → markdown (the body of its section in report.md).
    title: section heading (default: name). order: position in the report (smaller first).
    prefetch: ctx → [(RunConfig, label)]: runs the experiment will need whose configs can be built
        *now* without training anything (dependencies it checks with `ctx.ready`). The runner trains
        the union over all experiments side by side before running them, so that runs of different
        experiments share the worker processes.
    gating: label prefixes of the runs whose results name further runs of this experiment (e.g.
        PAD's runs, which its effective-weight runs need): they start before other runs of the
        same length, as every validation grid's runs do.
    """

    name: str
    tier: Tier
    run: Callable[[DemoContext], dict]
    report: Callable[[DemoContext, dict], str]
    title: str = ""
    order: int = 100
    prefetch: Callable[[DemoContext], list[tuple[RunConfig, str]]] | None = None
    gating: tuple[str, ...] = ()


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment to the registry (ValueError on a duplicate name or an unknown tier)."""
    if experiment.tier not in TIERS:
        raise ValueError(f"experiment {experiment.name!r}: tier must be one of {TIERS}, got {experiment.tier!r}")
    if experiment.name in EXPERIMENTS:
        raise ValueError(f"experiment {experiment.name!r} is already registered")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def experiments_for(tier: str, only: Sequence[str] | None = None) -> list[Experiment]:
    """Registered experiments that a `tier` demo runs (all tiers ≤ it), in report order.

    `only` restricts to names (or name prefixes such as "spine"); unknown names are an error.
    """
    if tier not in TIERS:
        raise ValueError(f"unknown demo tier {tier!r}; expected one of {TIERS}")
    level = TIERS.index(tier)
    chosen = [e for e in EXPERIMENTS.values() if TIERS.index(e.tier) <= level]
    if only:
        for name in only:
            if not any(e.name == name or e.name.startswith(name + ".") for e in EXPERIMENTS.values()):
                raise ValueError(f"unknown experiment {name!r}; registered: {', '.join(sorted(EXPERIMENTS))}")
        chosen = [e for e in chosen if any(e.name == n or e.name.startswith(n + ".") for n in only)]
    return sorted(chosen, key=lambda e: (e.order, e.name))


__all__ = ["EXPERIMENTS", "Experiment", "experiments_for", "register"]
