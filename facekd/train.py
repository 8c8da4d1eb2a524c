"""One training loop for teachers, students and ReFO stages (single process or torchrun / DDP).

A *task* is an `nn.Module` holding everything with parameters that the loss needs (student, margin
head, distiller projection, PAD branch) and whose `forward(batch, step)` returns `(loss, logs)`.
`train()` only knows tasks, so a new method is a new task (or a new distiller), never a new loop.
The tasks (FaceTask, ClassificationTask, MetricTask) and teacher providers live in `facekd.tasks`.

Resume contract: a run killed at any point and restarted with `resume=True` ends with the same
weights as an uninterrupted run (same seed, CPU, `num_workers=0`). This holds because
  * the learning rate is a pure function of the global step (`lr_at`), not scheduler state;
  * each epoch's sample order comes from a sampler seeded by (seed, epoch), and the DataLoader gets
    its own per-epoch generator, so creating an iterator never touches the global RNG;
  * the already-consumed batches of the current epoch are skipped at the *index* level (no image is
    loaded for them) and the torch / numpy / python RNG states saved with the checkpoint are
    restored, so dropout and augmentation continue exactly where they stopped.
With `num_workers > 0`, augmentations drawn inside workers are reproducible per epoch but not
across a mid-epoch resume (batches are re-assigned to workers).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler

from facekd import dist, store
from facekd.dist import resolve_device
from facekd.utils import atomic_path, load_torch, save_json


class TrainConfig(BaseModel):
    """Optimisation settings (arcface_torch defaults where it has one).

    `batch_size` is per process (as in arcface_torch); the global batch is batch_size × world size.
    `warmup_epochs` and `milestones` are in epochs (fractions allowed) and converted to steps.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_epochs: float = Field(default=0.0, ge=0)
    schedule: Literal["poly", "step"] = "poly"
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    clip_grad: float | None = Field(default=5.0, gt=0)
    clip_scope: Literal["backbone", "all"] = "backbone"
    amp: bool = False
    seed: int = 0
    checkpoint_every: int = Field(default=0, ge=0)
    log_every: int = Field(default=20, ge=1)
    num_workers: int = Field(default=0, ge=0)
    drop_last: bool = True
    device: str = "auto"
    find_unused_parameters: bool = True

    @model_validator(mode="after")
    def _check_milestones(self):
        if self.schedule == "step" and sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        return self


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate used for optimizer step `step` (0-based).

    Warm-up: linear from 0, `lr · step / warmup_steps` (arcface_torch's PolynomialLRWarmup).
    "poly": `lr · (1 − (step − warmup) / (total − warmup))`, power 1, reaching 0 at the end.
    "step": `lr · gamma^k`, k = number of milestones (in epochs) already reached.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * step / warmup
    if cfg.schedule == "poly":
        return cfg.lr * max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))
    passed = sum(step >= int(m * steps_per_epoch) for m in cfg.milestones)
    return cfg.lr * cfg.gamma**passed


# --------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def make_sampler(dataset, sampler, seed: int) -> Sampler:
    """The sampler train() uses: None → a uniform shuffle regenerated each epoch (seeded by
    (seed, epoch)); an int64 array / callable epoch → indices → IndexListSampler; a Sampler as is."""
    from facekd.data.sampler import IndexListSampler

    if isinstance(sampler, Sampler):
        return sampler
    if sampler is None:
        return IndexListSampler.shuffled(len(dataset), seed=seed)
    if callable(sampler):
        return IndexListSampler(sampler, seed=seed, regenerate_each_epoch=True)
    return IndexListSampler(np.asarray(sampler, dtype=np.int64), seed=seed)


class _SkipBatches(Sampler):
    """Yields the batches of `batch_sampler` after skipping the first `skip`, at most `limit`."""

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int, limit: int):
        self.batch_sampler, self.skip, self.limit = batch_sampler, skip, limit

    def __iter__(self) -> Iterator[list[int]]:
        for i, b in enumerate(self.batch_sampler):
            if i >= self.limit:
                return
            if i >= self.skip:
                yield b

    def __len__(self) -> int:
        return max(0, self.limit - self.skip)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    np_state: Any = np.random.get_state()  # the legacy tuple (name, keys, pos, has_gauss, gauss)
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict:
    """Load a train() checkpoint (weights_only=True) with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = load_torch(path, "training checkpoint")
    required = {"task", "optimizer", "step", "epoch", "batch_in_epoch", "rng", "config"}
    missing = required - set(ckpt) if isinstance(ckpt, dict) else required
    if missing:
        raise ValueError(f"{path}: not a facekd training checkpoint (missing {sorted(missing)})")
    return ckpt


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _backbone(task: nn.Module) -> nn.Module:
    return getattr(task, "student", task)


def run_identity(dataset) -> dict:
    """What a run records of its data and launch besides the TrainConfig: the dataset's content
    fingerprint, its augmentation (plain data) and the number of processes."""
    return {
        "dataset": str(dataset.fingerprint()),
        "augmentation": store.plain(dataset.augmentation, "dataset.augmentation"),
        "world_size": dist.world_size(),
    }


def _require_same_run(where: str, ckpt: dict, cfg: TrainConfig, run_meta: dict) -> None:
    store.require_same(
        where,
        {**ckpt["config"], **ckpt.get("run", {})},
        {**cfg.model_dump(mode="json"), **run_meta},
        "use another run directory or start over (resume=False, facekd train --no-resume)",
    )


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


# --------------------------------------------------------------------------------------------
# The loop, in named steps: prepare → restore or start → epochs (loader, step, log, checkpoint) → finish
# --------------------------------------------------------------------------------------------

CHECKPOINT = Path("checkpoints") / "last.pt"
# What a finished run vouches for: removed (after `done`) before a run starts over.
RUN_ARTIFACTS = (CHECKPOINT, Path("backbone.pth"), Path("head.pth"))


@dataclass
class _Position:
    """Where the run stands: optimizer steps taken, current epoch, batches done in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def advance(self, steps_per_epoch: int) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


@dataclass
class _Loop:
    """Everything the epoch loop works with, built once by `_prepare`."""

    task: nn.Module
    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    run_meta: dict
    sampler: Sampler
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], AbstractContextManager]
    model: nn.Module = field(init=False)  # the task, or the task in DDP
    clip_params: list[nn.Parameter] = field(init=False)  # what clip_grad clips
    main: bool = field(default_factory=dist.is_main)

    def __post_init__(self) -> None:
        self.model = self.task
        scope = _backbone(self.task) if self.cfg.clip_scope == "backbone" else self.task
        self.clip_params = [p for p in scope.parameters() if p.requires_grad]

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch


def _steps_per_epoch(samples: int, cfg: TrainConfig) -> int:
    """Optimizer steps per epoch: this process' batches, the smallest over ranks under DDP."""
    local = samples // cfg.batch_size if cfg.drop_last else math.ceil(samples / cfg.batch_size)
    steps = dist.min_over_ranks(local)
    if steps == 0:
        raise ValueError(
            f"dataset/sampler yields {samples} samples per process, fewer than "
            f"batch_size={cfg.batch_size}: no full batch"
        )
    return steps


def _mixed_precision(cfg: TrainConfig, device: torch.device):
    """(GradScaler or None, autocast context factory): fp16 + scaler on CUDA, bf16 on CPU, or off."""
    use_cuda_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", growth_interval=100) if use_cuda_amp else None
    if not cfg.amp:
        return scaler, nullcontext
    dtype = torch.float16 if use_cuda_amp else torch.bfloat16
    return scaler, lambda: torch.autocast(device.type, dtype=dtype)


def _prepare(task: nn.Module, dataset, sampler, cfg: TrainConfig, run_dir: Path, device, run_meta: dict) -> _Loop:
    """Check the teacher against the data, then build the sampler, step count and optimizer."""
    check_dataset = getattr(getattr(task, "teacher", None), "check_dataset", None)
    if check_dataset is not None:
        check_dataset(dataset)
    base_sampler = make_sampler(dataset, sampler, cfg.seed)
    steps_per_epoch = _steps_per_epoch(len(cast(Sized, base_sampler)), cfg)
    optimizer = torch.optim.SGD(
        [p for p in task.parameters() if p.requires_grad],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    scaler, autocast = _mixed_precision(cfg, device)
    return _Loop(task, cfg, run_dir, device, run_meta, base_sampler, steps_per_epoch, optimizer, scaler, autocast)


def _seed_process(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _restore_or_start(loop: _Loop, resume: bool) -> _Position:
    """Continue from checkpoints/last.pt (weights, optimizer, scaler, position, RNG states), or
    start: seed the global RNGs with seed + rank and clear the metrics of an earlier attempt."""
    ckpt_path = loop.run_dir / CHECKPOINT
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _require_same_run(str(ckpt_path), ckpt, loop.cfg, loop.run_meta)
        loop.task.load_state_dict(ckpt["task"])
        loop.optimizer.load_state_dict(ckpt["optimizer"])
        if loop.scaler is not None and ckpt["scaler"]:
            loop.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        if loop.main:
            _trim_metrics(loop.run_dir / "metrics.jsonl", ckpt["step"])
        return _Position(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"])
    _seed_process(loop.cfg.seed + dist.rank())
    if loop.main:
        (loop.run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return _Position()


def _wrap_ddp(loop: _Loop) -> None:
    """Under torchrun: the task in DistributedDataParallel (after restoring, so rank 0's state is broadcast)."""
    if dist.is_distributed():
        loop.model = nn.parallel.DistributedDataParallel(
            loop.task,
            device_ids=[loop.device.index] if loop.device.type == "cuda" else None,
            find_unused_parameters=loop.cfg.find_unused_parameters,
        )


def _epoch_loader(loop: _Loop, dataset, pos: _Position) -> DataLoader:
    """The DataLoader of the current epoch: its batches after the `pos.batch_in_epoch` already
    done (skipped as indices, no image loaded), with its own generator seeded by (seed, epoch)."""
    cfg = loop.cfg
    if hasattr(loop.sampler, "set_epoch"):
        loop.sampler.set_epoch(pos.epoch)
    batches = _SkipBatches(
        BatchSampler(loop.sampler, cfg.batch_size, cfg.drop_last), skip=pos.batch_in_epoch, limit=loop.steps_per_epoch
    )
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=cfg.num_workers,
        pin_memory=loop.device.type == "cuda",
        generator=torch.Generator().manual_seed(_epoch_seed(cfg.seed, pos.epoch)),
        persistent_workers=False,
    )


def _train_step(loop: _Loop, batch: dict, pos: _Position, lr: float) -> tuple[torch.Tensor, dict]:
    """One optimizer step at learning rate `lr`: forward (autocast), backward (scaled), clip, step."""
    for group in loop.optimizer.param_groups:
        group["lr"] = lr
    batch = _to_device(batch, loop.device)
    with loop.autocast():
        loss, logs = loop.model(batch, pos.step)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{loop.run_dir}: loss is {float(loss)} at step {pos.step} (epoch {pos.epoch})")
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.scaler is not None:
        loop.scaler.scale(loss).backward()
        loop.scaler.unscale_(loop.optimizer)
    else:
        loss.backward()
    if loop.cfg.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(loop.clip_params, loop.cfg.clip_grad)
    if loop.scaler is not None:
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
    else:
        loop.optimizer.step()
    return loss, logs


class _Log:
    """metrics.jsonl (rank 0) and the progress bar: one record every `log_every` steps and at the end."""

    def __init__(self, loop: _Loop, step: int, progress: bool):
        self.loop, self.t_last, self.step_last = loop, time.perf_counter(), step
        self.global_batch = loop.cfg.batch_size * dist.world_size()
        self.file = (loop.run_dir / "metrics.jsonl").open("a") if loop.main else None
        self.bar = None
        if progress and loop.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=loop.total_steps,
                initial=step,
                unit="step",
                desc=loop.run_dir.name,
                dynamic_ncols=True,
                leave=False,
            )

    def after_step(self, pos: _Position, loss: torch.Tensor, logs: dict, lr: float) -> None:
        cfg = self.loop.cfg
        if self.file is not None and (pos.step % cfg.log_every == 0 or pos.step == self.loop.total_steps):
            now = time.perf_counter()
            speed = self.global_batch * (pos.step - self.step_last) / max(now - self.t_last, 1e-9)
            self.t_last, self.step_last = now, pos.step
            record = {
                "step": pos.step,
                "epoch": pos.epoch,
                "loss": float(loss.detach()),
                "lr": lr,
                "samples_per_s": round(speed, 2),
                **logs,
            }
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.4f}", img_s=f"{speed:.0f}")
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()


def _save_checkpoint(loop: _Loop, pos: _Position) -> None:
    """checkpoints/last.pt, atomically: task, optimizer, scaler, position, RNG states, config, run."""
    state = {
        "task": _unwrap(loop.model).state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scaler": loop.scaler.state_dict() if loop.scaler is not None else {},
        "step": pos.step,
        "epoch": pos.epoch,
        "batch_in_epoch": pos.batch_in_epoch,
        "rng": _rng_state(),
        "config": loop.cfg.model_dump(mode="json"),
        "run": loop.run_meta,
    }
    with atomic_path(loop.run_dir / CHECKPOINT) as tmp:
        torch.save(state, tmp)


def _run_epochs(loop: _Loop, dataset, pos: _Position, progress: bool) -> None:
    """Train from `pos` to the last epoch, logging and checkpointing (rank 0) as configured."""
    cfg = loop.cfg
    if loop.main:
        loop.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(loop.run_dir / "train_config.json", cfg.model_dump(mode="json"))
    log = _Log(loop, pos.step, progress)
    loop.model.train()
    try:
        while pos.epoch < cfg.epochs:
            for batch in _epoch_loader(loop, dataset, pos):
                lr = lr_at(pos.step, cfg, loop.steps_per_epoch)
                loss, logs = _train_step(loop, batch, pos, lr)
                pos.advance(loop.steps_per_epoch)
                log.after_step(pos, loss, logs, lr)
                if loop.main and cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                    if pos.step < loop.total_steps:
                        _save_checkpoint(loop, pos)
            if pos.batch_in_epoch != 0:  # the loader ended early (sampler shorter than announced)
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
    finally:
        log.close()


def _finish(loop: _Loop, pos: _Position) -> None:
    """Rank 0: the final checkpoint, backbone.pth (student state_dict, insightface key names),
    head.pth (the head's state_dict, when the task has one), then `done` (last)."""
    _save_checkpoint(loop, pos)
    with atomic_path(loop.run_dir / "backbone.pth") as tmp:
        torch.save(_backbone(loop.task).state_dict(), tmp)
    head = getattr(loop.task, "head", None)
    if isinstance(head, nn.Module):
        with atomic_path(loop.run_dir / "head.pth") as tmp:
            torch.save(head.state_dict(), tmp)
    store.mark_done(
        loop.run_dir,
        {"step": pos.step, "epoch": pos.epoch, "config": loop.cfg.model_dump(mode="json"), **loop.run_meta},
    )


def _reuse_finished(task: nn.Module, cfg: TrainConfig, run_dir: Path, run_meta: dict) -> nn.Module:
    """A finished run of the same settings: its weights loaded into `task` (eval mode), no training."""
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    _require_same_run(str(run_dir), ckpt, cfg, run_meta)
    task.load_state_dict(ckpt["task"])
    return task.eval()


def train(
    task: nn.Module,
    dataset,
    cfg: TrainConfig,
    run_dir: str | Path,
    sampler=None,
    resume: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Train `task` on `dataset` and return it (unwrapped, on the training device, in eval mode).

    task: nn.Module with forward(batch, step) → (scalar loss, logs dict[str, float]).
    sampler: None (uniform shuffle), an int64 index array, a callable epoch → indices, or a Sampler.
    run_dir gets metrics.jsonl, checkpoints/last.pt (task, optimizer, AMP scaler, step, epoch,
    position within the epoch, RNG states), backbone.pth (state_dict of `task.student`), head.pth
    (state_dict of `task.head`, when there is one) and a `done` marker. The directory is locked
    for the whole call (`store.run_lock`: a second process is refused). A finished run directory
    is reused (weights loaded, no training); with `resume=True` an unfinished one continues from
    last.pt; with `resume=False` `done` and the old weights are removed before anything else.
    Under torchrun the task is wrapped in DDP and `batch_size` is per process; only rank 0 writes
    files. A fresh run seeds the global torch / numpy / python RNGs with `cfg.seed + rank`
    (dropout, augmentation); build and seed the model before calling.
    """
    run_dir = Path(run_dir)
    dist.init_from_env()
    device = resolve_device(cfg.device)
    task.to(device)
    run_meta = run_identity(dataset)
    with store.run_lock(run_dir):
        if resume and store.is_done(run_dir):
            return _reuse_finished(task, cfg, run_dir, run_meta)
        if not resume and dist.is_main():
            store.invalidate(run_dir, RUN_ARTIFACTS)
        loop = _prepare(task, dataset, sampler, cfg, run_dir, device, run_meta)
        pos = _restore_or_start(loop, resume)
        _wrap_ddp(loop)
        _run_epochs(loop, dataset, pos, progress)
        if loop.main:
            _finish(loop, pos)
        if dist.is_distributed():
            torch.distributed.barrier()
    return task.eval()


__all__ = ["RUN_ARTIFACTS", "TrainConfig", "load_checkpoint", "lr_at", "make_sampler", "run_identity", "train"]
