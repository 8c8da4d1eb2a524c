"""One training loop for teachers, students and ReFO stages (single process or torchrun / DDP).

A *task* is an `nn.Module` holding everything with parameters that the loss needs (student, margin
head, distiller projection, PAD branch) and whose `forward(batch, step)` returns `(loss, logs)`.
`train()` only knows tasks, so a new method is a new task (or a new distiller), never a new loop.
The tasks (FaceTask, ClassificationTask, MetricTask) and teacher providers live in `facekd.tasks`.

The package, one concern per module:

    config      TrainConfig / ValConfig (the `train:` block) and the learning-rate schedule
    loader      sample order per epoch, resume skipping, one DataLoader per run
    step        precision (bf16 / fp16 + GradScaler / off), micro-batches, clipping, the loss watch
    checkpoint  last.pt, per-rank class-centre shards, RNG states, loading on any world size
    monitor     metrics.jsonl, training.log (insightface's lines), TensorBoard, progress bar
    validation  `.bin` sets evaluated while training, best.pt
    loop        train(): prepare → restore or start → DDP → epochs → finish

Resume contract: a run killed at any point and restarted with `resume=True` ends with the same
weights as an uninterrupted run (same seed, CPU, `num_workers` 0, the default there). This holds
because
  * the learning rate is a pure function of the global step (`lr_at`), not scheduler state;
  * each epoch's sample order comes from a sampler seeded by (seed, epoch), and the DataLoader
    draws from its own generator re-seeded per epoch, so iterating never touches the global RNG;
  * the already-consumed batches of the current epoch are skipped at the *index* level (no image
    is loaded for them) and every rank's torch / numpy / python RNG states saved with the
    checkpoint are restored, so dropout and augmentation continue exactly where they stopped.
With workers (`num_workers` > 0, the default on CUDA) augmentation is drawn in the workers, whose
seeds persist across epochs: a resumed run is then statistically, not bitwise, the same. A run
resumed on another number of processes continues at the same epoch and sample count (rounded
down to a whole step), with its class centres re-split; its weights then follow the new global
batch.
"""

from facekd.dist import resolve_device
from facekd.train.checkpoint import load_checkpoint
from facekd.train.config import TrainConfig, ValConfig, lr_at
from facekd.train.loader import make_sampler
from facekd.train.loop import RUN_ARTIFACTS, run_identity, train

__all__ = [
    "RUN_ARTIFACTS",
    "TrainConfig",
    "ValConfig",
    "load_checkpoint",
    "lr_at",
    "make_sampler",
    "resolve_device",
    "run_identity",
    "train",
]
