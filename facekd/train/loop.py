"""The training loop, in named steps: prepare → restore or start → wrap → epochs → finish.

_prepare            teacher check, device set-up (channels_last, cudnn.benchmark, compile),
                    sampler, step count, optimizer, precision, loader, validation sets
_restore_or_start   last.pt (weights, centres re-split for this world size, optimizer, scaler,
                    position, RNG) or a fresh seed
_wrap_ddp           DDP around what trains and is replicated (no teacher, no sharded centres)
_run_epochs         micro-batches → optimizer steps → records, validation, checkpoints
_finish             last.pt, backbone.pth, head.pth (centres merged to (C, d)), done
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from facekd import dist, store
from facekd.dist import resolve_device
from facekd.models.checkpoint import merge_class_centres
from facekd.train import checkpoint as ck
from facekd.train.config import OBSERVERS, TrainConfig, lr_at
from facekd.train.loader import (
    EpochBatches,
    build_loader,
    epoch_iter,
    make_sampler,
    samples_per_epoch,
    to_device,
    worker_count,
)
from facekd.train.monitor import Monitor
from facekd.train.step import NonFiniteWatch, StepMeans, Stepper, mixed_precision
from facekd.train.validation import Validator
from facekd.utils import atomic_path, save_json

# What a finished run vouches for: removed (after `done`) before a run starts over.
RUN_ARTIFACTS = (ck.CHECKPOINT, Path("backbone.pth"), Path("head.pth"), Path("best.pt"), Path("best.json"))
# Settings of the run identity that may differ on resume (the class centres and the position
# are converted to the new number of processes).
RESUMABLE_IDENTITY = frozenset({"world_size"})


@dataclass
class Position:
    """Where the run stands: optimizer steps taken, current epoch, micro-batches done in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


@dataclass
class _Loop:
    """Everything the epoch loop works with, built once by `_prepare`."""

    task: nn.Module
    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    run_meta: dict
    batches: EpochBatches
    loader: DataLoader
    steps_per_epoch: int
    stepper: Stepper
    validator: Validator | None
    main: bool = field(default_factory=dist.is_main)

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.stepper.optimizer


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
    saved = {k: v for k, v in {**ckpt["config"], **ckpt.get("run", {})}.items() if k not in OBSERVERS}
    store.require_same(
        where,
        saved,
        {**cfg.record(), **run_meta},
        "use another run directory or start over (resume=False, facekd train --no-resume)",
        ignore=store.RESUMABLE | RESUMABLE_IDENTITY,
    )


def _steps_per_epoch(samples: int, cfg: TrainConfig) -> int:
    """Optimizer steps per epoch: this process' micro-batches // accumulate, the smallest over ranks."""
    local = samples // cfg.batch_size if cfg.drop_last else math.ceil(samples / cfg.batch_size)
    steps = dist.min_over_ranks(local // cfg.accumulate)
    if steps == 0:
        raise ValueError(
            f"dataset/sampler yields {samples} samples per process, fewer than "
            f"batch_size={cfg.batch_size} × accumulate={cfg.accumulate}: no full step"
        )
    return steps


def _check_sharding(task: nn.Module, cfg: TrainConfig) -> None:
    """Settings a sharded head cannot honour under torchrun, as one-line errors."""
    if not ck.sharded_modules(task) or dist.world_size() == 1:
        return
    if cfg.clip_scope == "all":
        raise ValueError("train.clip_scope: all is not supported with a sharded head under torchrun; use backbone")
    if not cfg.drop_last:
        raise ValueError("a sharded head under torchrun needs train.drop_last: true (equal batches on every rank)")


def _channels_last(module: nn.Module) -> None:
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # valid, missing from the stubs


def set_up_device(task: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """The task on `device`; `channels_last` networks; on CUDA cudnn.benchmark; `compile`: the
    student compiled in place (torch.compile; its state_dict keys are unchanged)."""
    task.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.channels_last:
        _channels_last(_backbone(task))
        teacher_model = getattr(getattr(task, "teacher", None), "model", None)
        if isinstance(teacher_model, nn.Module):
            _channels_last(teacher_model)
    if cfg.compile:
        _backbone(task).compile()


def _prepare(task: nn.Module, dataset, sampler, cfg: TrainConfig, run_dir: Path, device, run_meta: dict) -> _Loop:
    """Check the teacher against the data, set up the device, then build the sampler, loader,
    step count, optimizer, precision and validation sets."""
    check_dataset = getattr(getattr(task, "teacher", None), "check_dataset", None)
    if check_dataset is not None:
        check_dataset(dataset)
    _check_sharding(task, cfg)
    set_up_device(task, cfg, device)
    base_sampler: Sampler = make_sampler(dataset, sampler, cfg.seed)
    steps_per_epoch = _steps_per_epoch(samples_per_epoch(base_sampler), cfg)
    batches = EpochBatches(base_sampler, cfg.batch_size, cfg.drop_last, limit=steps_per_epoch * cfg.accumulate)
    loader = build_loader(dataset, batches, worker_count(cfg.num_workers, device), device)
    optimizer = torch.optim.SGD(
        [p for p in task.parameters() if p.requires_grad],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    scope = _backbone(task) if cfg.clip_scope == "backbone" else task
    clip = [p for p in scope.parameters() if p.requires_grad]
    stepper = Stepper(task, optimizer, mixed_precision(cfg, device), clip, cfg.clip_grad, cfg.accumulate)
    validator = None
    if cfg.val is not None and dist.is_main():
        validator = Validator(cfg.val, _backbone(task), dataset.image_size)
    return _Loop(task, cfg, run_dir, device, run_meta, batches, loader, steps_per_epoch, stepper, validator)


def _converted_position(ckpt: dict, loop: _Loop) -> Position:
    """The saved position; on another number of processes, converted by the samples seen in the
    epoch (rounded down to a whole optimizer step) onto this run's step grid."""
    pos = Position(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"])
    saved_world = int(ckpt.get("run", {}).get("world_size", dist.world_size()))
    if saved_world == dist.world_size():
        return pos
    k = loop.cfg.accumulate
    batches = (pos.batch_in_epoch * saved_world // dist.world_size()) // k * k
    batches = min(batches, loop.steps_per_epoch * k)
    return Position(pos.epoch * loop.steps_per_epoch + batches // k, pos.epoch, batches)


def _restore_or_start(loop: _Loop, resume: bool) -> Position:
    """Continue from checkpoints/last.pt (weights, centres, optimizer, scaler, position, RNG
    states, validation highs), or start: seed the global RNGs with seed + rank and clear the
    records of an earlier attempt."""
    ckpt_path = loop.run_dir / ck.CHECKPOINT
    if resume and ckpt_path.exists():
        ckpt = ck.load_checkpoint(ckpt_path)
        _require_same_run(str(ckpt_path), ckpt, loop.cfg, loop.run_meta)
        ck.load_task_state(loop.task, ckpt, loop.run_dir, loop.optimizer)
        scaler = loop.stepper.precision.scaler
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if loop.validator is not None and ckpt.get("val"):
            loop.validator.load_state_dict(ckpt["val"])
        pos = _converted_position(ckpt, loop)
        ck.restore_rng(ckpt, loop.cfg.seed, pos.step)
        if loop.main:
            ck.trim_metrics(loop.run_dir / "metrics.jsonl", ckpt["step"])
        return pos
    ck.seed_process(loop.cfg.seed + dist.rank())
    if loop.main:
        (loop.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (loop.run_dir / "training.log").unlink(missing_ok=True)
    return Position()


def _wrap_ddp(loop: _Loop) -> None:
    """Under torchrun: DDP over the task, ignoring what is not trained and replicated (the frozen
    teacher, sharded class centres): those are neither broadcast nor all-reduced. Done after
    restoring, so that rank 0's state is what DDP broadcasts."""
    if not dist.is_distributed():
        return
    ignored = ck.sharded_keys(loop.task)
    teacher = getattr(loop.task, "teacher", None)
    if isinstance(teacher, nn.Module):
        names = [n for n, _ in teacher.named_parameters()] + [n for n, _ in teacher.named_buffers()]
        ignored |= {f"teacher.{n}" for n in names}
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(loop.task, sorted(ignored))
    loop.stepper.model = nn.parallel.DistributedDataParallel(
        loop.task,
        device_ids=[loop.device.index] if loop.device.type == "cuda" else None,
        find_unused_parameters=loop.cfg.find_unused_parameters,
    )


def _save_checkpoint(loop: _Loop, pos: Position, watch: NonFiniteWatch) -> None:
    """Every rank: its centre shards and RNG state; rank 0: checkpoints/last.pt (task, optimizer,
    scaler, position, RNG states, config, run, validation highs), atomically, then old shards go."""
    watch.check(str(loop.run_dir))
    rngs = ck.rng_states_of_all_ranks()
    folder = ck.write_shards(loop.run_dir, pos.step, loop.task, loop.optimizer)
    if folder is not None and dist.is_distributed():
        torch.distributed.barrier()
    if not loop.main:
        return
    task_state, opt_state = ck.replicated_state(loop.task, loop.optimizer)
    modules = {name: ck.num_classes_of(m) for name, m in ck.sharded_modules(loop.task).items()}
    scaler = loop.stepper.precision.scaler
    state = {
        "task": task_state,
        "optimizer": opt_state,
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": pos.step,
        "epoch": pos.epoch,
        "batch_in_epoch": pos.batch_in_epoch,
        "rng": rngs[0],
        "rng_ranks": rngs,
        "config": loop.cfg.model_dump(mode="json"),
        "run": loop.run_meta,
        "shards": {"folder": folder, "world_size": dist.world_size(), "modules": modules} if folder else None,
        "val": loop.validator.state_dict() if loop.validator is not None else None,
    }
    with atomic_path(loop.run_dir / ck.CHECKPOINT) as tmp:
        torch.save(state, tmp)
    ck.remove_old_shards(loop.run_dir, folder)


def _validate(loop: _Loop, pos: Position, monitor: Monitor) -> None:
    """Rank 0, every `val.every` steps: the `.bin` sets, their lines and records, best.pt."""
    validator = loop.validator
    if validator is None or not validator.due(pos.step, loop.total_steps):
        return
    student = _backbone(loop.task)
    results, lines, better = validator.evaluate(student, pos.step)
    monitor.validation(pos.step, pos.epoch, results, lines)
    if better:
        validator.save_best(loop.run_dir, student)


def _after_step(loop: _Loop, pos: Position, means: StepMeans, monitor: Monitor, watch: NonFiniteWatch, lr: float):
    """Records (every `log_every` steps), validation and checkpoints after optimizer step `pos.step`."""
    cfg = loop.cfg
    loss, logs = means.pop()
    watch.see(loss, pos.step)
    monitor.add(loss)
    if monitor.due(pos.step, cfg.log_every):
        watch.check(str(loop.run_dir))
        scaler = loop.stepper.precision.scaler
        monitor.record(pos.step, pos.epoch, loss, logs, lr, scaler.get_scale() if scaler is not None else None)
    _validate(loop, pos, monitor)
    if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0 and pos.step < loop.total_steps:
        _save_checkpoint(loop, pos, watch)


def _run_epochs(loop: _Loop, pos: Position, progress: bool) -> NonFiniteWatch:
    """Train from `pos` to the last epoch: micro-batches, an optimizer step every `accumulate`."""
    cfg, stepper = loop.cfg, loop.stepper
    if loop.main:
        loop.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(loop.run_dir / "train_config.json", cfg.model_dump(mode="json"))
    samples_per_step = cfg.batch_size * cfg.accumulate * dist.world_size()
    monitor = Monitor(
        loop.run_dir, step=pos.step, total_steps=loop.total_steps, samples_per_step=samples_per_step,
        main=loop.main, progress=progress,
    )  # fmt: skip
    watch, means = NonFiniteWatch(loop.device), StepMeans()
    loop.task.train()
    channels_last = cfg.channels_last
    try:
        while pos.epoch < cfg.epochs:
            for batch in epoch_iter(loop.loader, loop.batches, cfg.seed, pos.epoch, pos.batch_in_epoch):
                pos.batch_in_epoch += 1
                last = pos.batch_in_epoch % cfg.accumulate == 0
                means.add(*stepper.micro_batch(to_device(batch, loop.device, channels_last), pos.step, last))
                if not last:
                    continue
                lr = lr_at(pos.step, cfg, loop.steps_per_epoch)
                stepper.optimizer_step(lr)
                pos.step += 1
                if pos.batch_in_epoch == loop.steps_per_epoch * cfg.accumulate:
                    pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                _after_step(loop, pos, means, monitor, watch, lr)
            if pos.batch_in_epoch != 0:  # the loader ended early (sampler shorter than announced)
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                stepper.optimizer.zero_grad(set_to_none=True)  # no step of a partial group
                means.parts.clear()
        watch.check(str(loop.run_dir))
    finally:
        monitor.close()
    return watch


def _finish(loop: _Loop, pos: Position, watch: NonFiniteWatch) -> None:
    """The final checkpoint (every rank), then rank 0: backbone.pth (student state_dict,
    insightface key names), head.pth (the head's state_dict; sharded centres merged to (C, d)),
    then `done` (last)."""
    _save_checkpoint(loop, pos, watch)
    if not loop.main:
        return
    with atomic_path(loop.run_dir / "backbone.pth") as tmp:
        torch.save(_backbone(loop.task).state_dict(), tmp)
    head = getattr(loop.task, "head", None)
    if isinstance(head, nn.Module):
        with atomic_path(loop.run_dir / "head.pth") as tmp:
            torch.save(_head_state(loop, head), tmp)
    store.mark_done(
        loop.run_dir,
        {"step": pos.step, "epoch": pos.epoch, "config": loop.cfg.model_dump(mode="json"), **loop.run_meta},
    )


def _head_state(loop: _Loop, head: nn.Module) -> dict:
    """The head's state_dict; a sharded head's is {"weight": (C, d)} from the final shards (what
    `teacher.head` and `facekd.models.checkpoint.merge_class_centres` read)."""
    if not getattr(head, "shards_over_ranks", False):
        return head.state_dict()
    name = next(n for n, m in loop.task.named_modules() if m is head)
    ckpt = ck.load_checkpoint(loop.run_dir / ck.CHECKPOINT)
    folder = loop.run_dir / "checkpoints" / ckpt["shards"]["folder"] / name
    paths = [folder / f"rank_{r}_softmax_weight.pt" for r in range(dist.world_size())]
    return {"weight": merge_class_centres(paths, ck.num_classes_of(head))}


def _reuse_finished(task: nn.Module, cfg: TrainConfig, run_dir: Path, run_meta: dict) -> nn.Module:
    """A finished run of the same settings: its weights loaded into `task` (eval mode), no training."""
    ckpt = ck.load_checkpoint(run_dir / ck.CHECKPOINT)
    _require_same_run(str(run_dir), ckpt, cfg, run_meta)
    ck.load_task_state(task, ckpt, run_dir)
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

    task: nn.Module with forward(batch, step) → (scalar loss, logs dict[str, float | tensor]).
    sampler: None (uniform shuffle), an int64 index array, a callable epoch → indices, or a Sampler.
    run_dir gets metrics.jsonl, training.log, checkpoints/last.pt (+ centre shards of a sharded
    head), backbone.pth (state_dict of `task.student`), head.pth (state_dict of `task.head`,
    when there is one), best.pt / best.json (with `cfg.val`), tensorboard/ (when installed) and
    a `done` marker. The directory is locked for the whole call (`store.run_lock`). A finished
    run directory is reused (weights loaded, no training); with `resume=True` an unfinished one
    continues from last.pt, also on another number of processes; with `resume=False` `done` and
    the old weights are removed before anything else. Under torchrun the replicated trainable
    parts are in DDP and `batch_size` is per process; only rank 0 writes files (and each rank its
    centre shard). A fresh run seeds the global torch / numpy / python RNGs with `cfg.seed + rank`
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
        watch = _run_epochs(loop, pos, progress)
        _finish(loop, pos, watch)
        if dist.is_distributed():
            torch.distributed.barrier()
    return task.eval()


__all__ = ["RUN_ARTIFACTS", "Position", "run_identity", "set_up_device", "train"]
