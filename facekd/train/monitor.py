"""What a run reports while it trains (rank 0): `metrics.jsonl`, insightface's `training.log`,
TensorBoard scalars (when the `tensorboard` extra is installed) and the progress bar.

Every `log_every` optimizer steps (and at the last one) the loss and the task's logs, which stay
tensors between records, are read back in one transfer:

- metrics.jsonl: {"step", "epoch", "loss" (this step), "loss_avg" (mean since the last record),
  "lr", "samples_per_s", the task's logs}; validation records {"step", "epoch", "val": {set: ...}};
- training.log: arcface_torch's lines, `Training: <asctime>-Speed … samples/sec   Loss …
  LearningRate …   Epoch: …   Global Step: …   [Fp16 Grad Scale: …   ]Required: … hours`, and
  the validation lines `[lfw][step]XNorm / Accuracy-Flip / Accuracy-Highest`;
- TensorBoard (run_dir/tensorboard): loss, learning_rate, samples_per_s, time_for_end, the logs,
  one scalar per validation set (its Accuracy-Flip); events after a resumed step are purged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

# arcface_torch's CallBackLogging formats (the grad scale only with fp16)
SPEED_LINE = (
    "Speed %.2f samples/sec   Loss %.4f   LearningRate %.6f   Epoch: %d   Global Step: %d   %sRequired: %1.f hours"
)
GRAD_SCALE = "Fp16 Grad Scale: %2.f   "


def _summary_writer(run_dir: Path, step: int):
    """A TensorBoard SummaryWriter in run_dir/tensorboard, or None without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional `tensorboard` extra is not installed
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step)


def _as_floats(values: list[Any]) -> list[float]:
    """Floats of tensors and numbers, reading all tensors back in one transfer."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    read = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist() if tensors else [])
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


class Monitor:
    """Records of one run (rank 0; other ranks get an inert monitor)."""

    def __init__(
        self, run_dir: Path, *, step: int, total_steps: int, samples_per_step: int, main: bool, progress: bool
    ):
        self.run_dir, self.total_steps, self.samples_per_step = run_dir, total_steps, samples_per_step
        self.main = main
        self.t_start = self.t_last = time.perf_counter()
        self.step_start = self.step_last = step
        self.loss_sum: Any = 0.0
        self.file = (run_dir / "metrics.jsonl").open("a") if main else None
        self.log_file = (run_dir / "training.log").open("a") if main else None
        self.writer = _summary_writer(run_dir, step) if main else None
        self.bar = None
        if progress and main:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=step, unit="step", desc=run_dir.name, dynamic_ncols=True, leave=False
            )

    def line(self, message: str) -> None:
        """One line of training.log in arcface_torch's format."""
        if self.log_file is not None:
            now = time.time()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
            self.log_file.write(f"Training: {stamp}-{message}\n")
            self.log_file.flush()

    def print(self, message: str) -> None:
        """A line on the console (through the progress bar when there is one) and in training.log."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)
        for part in message.splitlines():
            self.line(part)

    def due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total_steps

    def add(self, loss: torch.Tensor) -> None:
        """Count one optimizer step and add its loss to the window (no read of the device)."""
        self.loss_sum = self.loss_sum + loss
        if self.bar is not None:
            self.bar.update(1)

    def record(self, step: int, epoch: int, loss: torch.Tensor, logs: dict, lr: float, grad_scale=None) -> None:
        """Write metrics.jsonl, training.log and TensorBoard for `step` (one read of the device)."""
        if not self.main:
            self.loss_sum = 0.0
            return
        values = _as_floats([loss, self.loss_sum, *logs.values(), *([grad_scale] if grad_scale is not None else [])])
        step_loss, loss_total, log_values = values[0], values[1], values[2 : 2 + len(logs)]
        now = time.perf_counter()
        steps = max(1, step - self.step_last)
        speed = self.samples_per_step * (step - self.step_last) / max(now - self.t_last, 1e-9)
        per_step = (now - self.t_start) / max(1, step - self.step_start)
        hours = per_step * (self.total_steps - step) / 3600
        self.t_last, self.step_last, self.loss_sum = now, step, 0.0
        record = {"step": step, "epoch": epoch, "loss": step_loss, "loss_avg": loss_total / steps, "lr": lr}
        record |= {"samples_per_s": round(speed, 2), **dict(zip(logs, log_values))}
        self._write(record)
        scale = GRAD_SCALE % values[-1] if grad_scale is not None else ""
        self.line(SPEED_LINE % (speed, record["loss_avg"], lr, epoch, step, scale, hours))
        if self.writer is not None:
            scalars = {"loss": record["loss_avg"], "learning_rate": lr, "samples_per_s": speed, "time_for_end": hours}
            for tag, value in {**scalars, **dict(zip(logs, log_values))}.items():
                self.writer.add_scalar(tag, value, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.4f}", img_s=f"{speed:.0f}")

    def validation(self, step: int, epoch: int, results: dict[str, dict], lines: str) -> None:
        """Write one validation round: its insightface lines, a metrics.jsonl record, TensorBoard."""
        if not self.main:
            return
        self.print(lines)
        self._write({"step": step, "epoch": epoch, "val": results})
        if self.writer is not None:
            for name, r in results.items():
                self.writer.add_scalar(name, r["accuracy_flip"], step)

    def _write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        for f in (self.bar, self.file, self.log_file, self.writer):
            if f is not None:
                f.close()


__all__ = ["GRAD_SCALE", "SPEED_LINE", "Monitor"]
