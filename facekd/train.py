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
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler

from facekd import dist
from facekd.utils import atomic_path, save_json


class TrainConfig(BaseModel):
    """Optimisation settings (arcface_torch defaults where it has one).

    `batch_size` is per process (as in arcface_torch); the global batch is batch_size × world size.
    `warmup_epochs` and `milestones` are in epochs (fractions allowed) and converted to steps.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    schedule: Literal["poly", "step"] = "poly"
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    clip_grad: float | None = Field(5.0, gt=0)
    clip_scope: Literal["backbone", "all"] = "backbone"
    amp: bool = False
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0)
    log_every: int = Field(20, ge=1)
    num_workers: int = Field(0, ge=0)
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


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" → the local CUDA device when available (LOCAL_RANK under torchrun), else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
    np_state = np.random.get_state()
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
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"task", "optimizer", "step", "epoch", "batch_in_epoch", "rng", "config"} - set(ckpt)
    if missing:
        raise ValueError(f"{path}: not a facekd training checkpoint (missing {sorted(missing)})")
    return ckpt


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _save_checkpoint(path: Path, task, optimizer, scaler, step, epoch, batch_in_epoch, cfg, run_meta) -> None:
    state = {
        "task": _unwrap(task).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "rng": _rng_state(),
        "config": cfg.model_dump(mode="json"),
        "run": run_meta,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _check_same_run(where: str, saved_cfg: dict, saved_run: dict, cfg: TrainConfig, run_meta: dict) -> None:
    now = cfg.model_dump(mode="json")
    diff = [k for k in sorted(set(now) | set(saved_cfg)) if now.get(k) != saved_cfg.get(k) and k not in _RESUMABLE_KEYS]
    diff += [k for k in sorted(run_meta) if run_meta[k] != saved_run.get(k)]
    if diff:
        detail = ", ".join(
            f"{k}: saved {saved_cfg.get(k, saved_run.get(k))!r} vs now {now.get(k, run_meta.get(k))!r}" for k in diff
        )
        raise ValueError(f"{where} belongs to a different run ({detail}); use another run directory or resume=False")


# Settings that may change between a killed run and its resume without changing the result.
_RESUMABLE_KEYS = {"checkpoint_every", "log_every", "num_workers", "device"}


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
# The loop
# --------------------------------------------------------------------------------------------


def _backbone(task: nn.Module) -> nn.Module:
    return getattr(task, "student", task)


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
    position within the epoch, RNG states), backbone.pth (state_dict of `task.student`) and a
    `done` marker. A finished run directory is reused (weights loaded, no training); with
    `resume=True` an unfinished one continues from last.pt. Under torchrun the task is wrapped in
    DDP and `batch_size` is per process; only rank 0 writes files. A fresh run seeds the global
    torch / numpy / python RNGs with `cfg.seed + rank` (dropout, augmentation); build and seed the
    model before calling.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    done_path = run_dir / "done"
    distributed = dist.init_from_env()
    device = resolve_device(cfg.device)
    task.to(device)
    run_meta = {
        "dataset": str(dataset.fingerprint()) if hasattr(dataset, "fingerprint") else str(len(dataset)),
        "world_size": dist.world_size(),
    }

    if resume and done_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_same_run(str(done_path.parent), ckpt["config"], ckpt.get("run", {}), cfg, run_meta)
        task.load_state_dict(ckpt["task"])
        return task.eval()

    teacher = getattr(task, "teacher", None)
    if hasattr(teacher, "check_dataset"):
        teacher.check_dataset(dataset)
    seed_offset = dist.rank()
    base_sampler = make_sampler(dataset, sampler, cfg.seed)
    local_steps = (
        len(base_sampler) // cfg.batch_size if cfg.drop_last else math.ceil(len(base_sampler) / cfg.batch_size)
    )
    steps_per_epoch = local_steps
    if distributed:
        t = torch.tensor([local_steps], dtype=torch.long)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        steps_per_epoch = int(t.item())
    if steps_per_epoch == 0:
        raise ValueError(
            f"dataset/sampler yields {len(base_sampler)} samples per process, fewer than "
            f"batch_size={cfg.batch_size}: no full batch"
        )
    total_steps = cfg.epochs * steps_per_epoch

    optimizer = torch.optim.SGD(
        [p for p in task.parameters() if p.requires_grad],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    use_cuda_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", growth_interval=100) if use_cuda_amp else None
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.float16 if use_cuda_amp else torch.bfloat16))
        if cfg.amp
        else nullcontext
    )

    step, epoch, batch_in_epoch = 0, 0, 0
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_same_run(str(ckpt_path), ckpt["config"], ckpt.get("run", {}), cfg, run_meta)
        task.load_state_dict(ckpt["task"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        _set_rng_state(ckpt["rng"])
        if dist.is_main():
            _trim_metrics(run_dir / "metrics.jsonl", step)
    else:
        torch.manual_seed(cfg.seed + seed_offset)
        np.random.seed((cfg.seed + seed_offset) % 2**32)
        random.seed(cfg.seed + seed_offset)
        if dist.is_main():
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    model = task
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            task,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )
    clip_params = [
        p for p in (_backbone(task) if cfg.clip_scope == "backbone" else task).parameters() if p.requires_grad
    ]

    main = dist.is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(run_dir / "train_config.json", cfg.model_dump(mode="json"))
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", desc=run_dir.name, dynamic_ncols=True, leave=False)
    global_batch = cfg.batch_size * dist.world_size()
    metrics = (run_dir / "metrics.jsonl").open("a") if main else None
    model.train()
    t_last, step_last = time.perf_counter(), step
    try:
        while epoch < cfg.epochs:
            if hasattr(base_sampler, "set_epoch"):
                base_sampler.set_epoch(epoch)
            batches = _SkipBatches(
                BatchSampler(base_sampler, cfg.batch_size, cfg.drop_last), skip=batch_in_epoch, limit=steps_per_epoch
            )
            loader = DataLoader(
                dataset,
                batch_sampler=batches,
                num_workers=cfg.num_workers,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch)),
                persistent_workers=False,
            )
            for batch in loader:
                lr = lr_at(step, cfg, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = _to_device(batch, device)
                with autocast():
                    loss, logs = model(batch, step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{run_dir}: loss is {float(loss)} at step {step} (epoch {epoch})")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(clip_params, cfg.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                step += 1
                batch_in_epoch += 1
                if batch_in_epoch == steps_per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0
                if main and (step % cfg.log_every == 0 or step == total_steps):
                    now = time.perf_counter()
                    speed = global_batch * (step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": float(loss.detach()),
                        "lr": lr,
                        "samples_per_s": round(speed, 2),
                        **logs,
                    }
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.4f}", img_s=f"{speed:.0f}")
                if bar is not None:
                    bar.update(1)
                if main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                    _save_checkpoint(ckpt_path, model, optimizer, scaler, step, epoch, batch_in_epoch, cfg, run_meta)
            if batch_in_epoch != 0:  # the loader ended early (sampler shorter than announced)
                epoch, batch_in_epoch = epoch + 1, 0
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()

    if main:
        _save_checkpoint(ckpt_path, model, optimizer, scaler, step, epoch, batch_in_epoch, cfg, run_meta)
        with atomic_path(run_dir / "backbone.pth") as tmp:
            torch.save(_backbone(task).state_dict(), tmp)
        save_json(done_path, {"step": step, "epoch": epoch, "config": cfg.model_dump(mode="json"), **run_meta})
    if distributed:
        torch.distributed.barrier()
    return task.eval()


__all__ = ["TrainConfig", "load_checkpoint", "lr_at", "make_sampler", "resolve_device", "train"]
