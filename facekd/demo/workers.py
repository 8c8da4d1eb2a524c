"""Training demo runs in worker processes: independent runs of one batch train side by side.

`train_in_worker` is what each process of `DemoContext.train_many`'s pool runs: it rebuilds the
run config from JSON, trains it in the demo's store (the same content-addressed directory the main
process then reuses) and embeds the SynthFaces splits the demo will evaluate it on (content-addressed
caches too), so that evaluation also runs side by side. Each run directory is locked by the
trainer, so two processes never train the same run.
"""

from __future__ import annotations

from collections.abc import Sequence


def train_in_worker(root: str, settings_json: str, cfg_json: str, splits: Sequence[str]) -> str:
    """Train the run `cfg_json` (a `RunConfig` as JSON) in the demo directory `root`, then embed the
    SynthFaces `splits` ("test", "val") with it; returns the run directory."""
    import torch

    from facekd.config import RunConfig
    from facekd.demo.context import DemoContext
    from facekd.demo.settings import DemoSettings

    settings = DemoSettings.model_validate_json(settings_json)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    ctx = DemoContext(root, settings, progress=False, index=False)
    cfg = RunConfig.model_validate_json(cfg_json)
    run = ctx.store.train(cfg)
    for split in splits:
        ctx.split_cache(run.model, split)
    return str(run.directory)


__all__ = ["train_in_worker"]
