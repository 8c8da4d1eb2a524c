"""ReFO / ReFO+ ("Rethinking Feature-based Knowledge Distillation for Face Recognition") and TwoNN.

`config` (RefoConfig), `pipeline` (the five stages as run configs, `run_refo`), `stages`
(content-addressed trained runs and embedding caches), `intrinsic` (TwoNN intrinsic dimension),
`memory` (what a feature-only student saves), `commands` (`facekd refo`, `facekd intrinsic-dim`).
"""

from facekd.refo.config import RefoConfig
from facekd.refo.memory import class_centre_memory, format_bytes
from facekd.refo.pipeline import STAGES, RefoResult, proxy_config, reverse_config, run_refo, student_config
from facekd.refo.stages import StageStore, TrainedRun

__all__ = [
    "STAGES",
    "RefoConfig",
    "RefoResult",
    "StageStore",
    "TrainedRun",
    "class_centre_memory",
    "format_bytes",
    "proxy_config",
    "reverse_config",
    "run_refo",
    "student_config",
]
