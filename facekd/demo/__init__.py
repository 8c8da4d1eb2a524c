"""`facekd demo`: the experiment registry (`facekd.demo.core`) and one module of experiments per paper.

Importing this package imports every module in `EXPERIMENT_MODULES`, each of which registers its
experiments with `facekd.demo.core.register`. Import errors surface (none is skipped silently).
"""

from __future__ import annotations

import importlib

from facekd.demo.core import EXPERIMENTS, DemoContext, Experiment, register, run_demo, tier_settings

EXPERIMENT_MODULES: list[str] = [
    "facekd.demo.spine",
    "facekd.demo.bias",
    "facekd.demo.pad",
    "facekd.demo.refo",
]

for _name in EXPERIMENT_MODULES:
    importlib.import_module(_name)

__all__ = ["EXPERIMENTS", "EXPERIMENT_MODULES", "DemoContext", "Experiment", "register", "run_demo", "tier_settings"]
