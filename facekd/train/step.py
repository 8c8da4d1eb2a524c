"""One optimizer step: mixed precision, micro-batches (gradient accumulation), clipping, and a
watch on the loss that never waits for the device.

Host synchronisation: nothing here reads a device value back except the fp16 GradScaler (which
must know whether a gradient overflowed before stepping). The loss and the logs stay tensors;
`NonFiniteWatch` keeps the first step whose loss was not finite on the device, and the loop reads
it (and the logs) only every `log_every` steps, before a checkpoint and at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from facekd.train.config import TrainConfig

Precision = Literal["bf16", "fp16", "off"]


def precision_of(cfg: TrainConfig, device: torch.device) -> Precision:
    """`train.amp` on this device: true → fp16 on CUDA, bf16 elsewhere; false → off."""
    amp = cfg.amp
    if amp is True:
        return "fp16" if device.type == "cuda" else "bf16"
    if amp is False or amp == "off":
        return "off"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp: fp16 needs a CUDA device (its GradScaler); use bf16 on CPU")
    return amp


@dataclass
class MixedPrecision:
    """The autocast context factory and, for fp16, the GradScaler (growth_interval=100, as arcface_torch)."""

    name: Precision
    autocast: Callable[[], AbstractContextManager]
    scaler: torch.amp.GradScaler | None


def mixed_precision(cfg: TrainConfig, device: torch.device) -> MixedPrecision:
    name = precision_of(cfg, device)
    if name == "off":
        return MixedPrecision(name, nullcontext, None)
    dtype = torch.float16 if name == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", growth_interval=100) if name == "fp16" else None
    return MixedPrecision(name, lambda: torch.autocast(device.type, dtype=dtype), scaler)


class NonFiniteWatch:
    """The first optimizer step whose loss was NaN or infinite, kept on the device (no sync)."""

    def __init__(self, device: torch.device):
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def see(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach()) & (self.first < 0)
        self.first = torch.where(bad, torch.full_like(self.first, step), self.first)

    def check(self, where: str) -> None:
        """Raise FloatingPointError naming the step if a loss was not finite (reads the device)."""
        step = int(self.first)
        if step >= 0:
            raise FloatingPointError(
                f"{where}: loss is not finite at step {step}; the weights after it are not kept "
                "(lower the learning rate, or use amp: bf16 / off)"
            )


@dataclass
class Stepper:
    """What a step works with: the model (the task, or the task in DDP), its optimizer, precision,
    the parameters clipped, and the micro-batches per step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    precision: MixedPrecision
    clip_params: list[nn.Parameter]
    clip_grad: float | None
    accumulate: int

    def micro_batch(self, batch: dict, step: int, last: bool) -> tuple[torch.Tensor, dict]:
        """Forward (autocast) and backward of one micro-batch; under DDP the gradients are
        all-reduced only on the `last` micro-batch of the step. Returns (loss, logs), detached."""
        model = self.model
        with model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) and not last else nullcontext():
            with self.precision.autocast():
                loss, logs = self.model(batch, step)
            scaled = loss / self.accumulate if self.accumulate > 1 else loss
            if self.precision.scaler is not None:
                scaled = self.precision.scaler.scale(scaled)
            scaled.backward()
        return loss.detach(), logs

    def optimizer_step(self, lr: float) -> None:
        """Unscale (fp16), clip, step at learning rate `lr`, then clear the gradients."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.clip_params, self.clip_grad)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class StepMeans:
    """Means over the micro-batches of one step of the loss and the logs (tensors or floats)."""

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, dict]] = []

    def add(self, loss: torch.Tensor, logs: dict) -> None:
        self.parts.append((loss, logs))

    def pop(self) -> tuple[torch.Tensor, dict]:
        parts, self.parts = self.parts, []
        if len(parts) == 1:
            return parts[0]
        n = len(parts)
        loss = sum((p[0] for p in parts[1:]), parts[0][0]) / n
        keys = [k for k in parts[0][1] if all(k in p[1] for p in parts)]
        return loss, {k: sum(p[1][k] for p in parts) / n for k in keys}


__all__ = ["MixedPrecision", "NonFiniteWatch", "Precision", "StepMeans", "Stepper", "mixed_precision", "precision_of"]
