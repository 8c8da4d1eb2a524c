"""`facekd demo`: tiers of experiments on SynthFaces, one module of experiments per paper.

`settings` (tiers), `registry` (`Experiment`, `register`), `context` (`DemoContext`: runs as
run configs in content-addressed directories, caches, evaluation), `report` (tables), `runner`
(`run_demo`, stored results, report.md). Importing this package imports every module in
`EXPERIMENT_MODULES`, each of which registers its experiments; import errors surface (none is
skipped silently).
"""

from __future__ import annotations

import importlib

from facekd.demo.context import DemoContext
from facekd.demo.registry import EXPERIMENTS, Experiment, register
from facekd.demo.runner import run_demo
from facekd.demo.settings import DemoSettings, tier_settings

EXPERIMENT_MODULES: list[str] = [
    "facekd.demo.spine",
    "facekd.demo.bias",
    "facekd.demo.pad",
    "facekd.demo.refo",
    "facekd.demo.baselines",
    "facekd.demo.fmnist",
    "facekd.demo.metric",
]

for _name in EXPERIMENT_MODULES:
    importlib.import_module(_name)

__all__ = [
    "EXPERIMENTS",
    "EXPERIMENT_MODULES",
    "DemoContext",
    "DemoSettings",
    "Experiment",
    "register",
    "run_demo",
    "tier_settings",
]
