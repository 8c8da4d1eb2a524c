"""Training demo runs in worker processes: independent runs of one batch train side by side.

`train_in_worker` is what each process of `DemoContext.train_many`'s pool runs: it rebuilds the
run config from JSON and trains it in the demo's store (the same content-addressed directory the
main process then reuses). Each run directory is locked by the trainer, so two processes never
train the same run.
"""

from __future__ import annotations


def train_in_worker(root: str, cfg_json: str, threads: int | None) -> str:
    """Train the run `cfg_json` (a `RunConfig` as JSON) in the store at `root`; returns its directory."""
    import torch

    from facekd.config import RunConfig
    from facekd.refo.stages import StageStore

    if threads:
        torch.set_num_threads(threads)
    cfg = RunConfig.model_validate_json(cfg_json)
    return str(StageStore(root, progress=False).train(cfg).directory)


__all__ = ["train_in_worker"]
