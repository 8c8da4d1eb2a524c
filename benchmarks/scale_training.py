"""Growth of the training side with the data: embedding and a training epoch against N (images),
the margin head against C (classes), full and sharded. Each row is measured in this run.

A row times one operation at three sizes and fits the growth exponent b of time ∝ size^b
(least squares on logs), from the process CPU time (`time.process_time`, torch on one thread:
what other processes on the machine do not change) and from wall time.

- embedding: `facekd.embed.embed_dataset` (mbf_tiny, 32 px, d = 128) over N in-memory images;
- training epoch: `facekd.train.train`, one epoch of mbf_tiny + ArcFace + L2 KD from a teacher
  EmbeddingCache of the N rows (batch 64): nothing per step may grow with N, so b ≈ 1;
- margin head: one optimizer step (forward, backward, SGD) of the head alone for a batch of 128
  embeddings (d = 128) against C classes: the full ArcFace head + cross-entropy, and `PartialFC`
  in one process at rate 1 and at the sampled rate 0.1 (across W processes each rank would hold
  C / W of the centres; not measured here).

    .venv/bin/python benchmarks/scale_training.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facekd.data.arrays import ArrayDataset
from facekd.embed import embed_dataset
from facekd.losses.distiller import Distiller
from facekd.models import get_model
from facekd.models.heads import get_head
from facekd.models.partial_fc import PartialFC
from facekd.tasks import CachedTeacher, FaceTask
from facekd.train import TrainConfig, train
from facekd.train.checkpoint import num_classes_of


@dataclass
class Row:
    """One measured row: the operation, what it grows against, the sizes and the times."""

    name: str
    against: str
    sizes: list[int]
    cpu_s: list[float]
    wall_s: list[float]

    def exponent(self, times: list[float]) -> float:
        return float(np.polyfit(np.log(self.sizes), np.log(times), 1)[0])

    def line(self) -> str:
        cpu = ", ".join(f"{t:.2f}" for t in self.cpu_s)
        wall = ", ".join(f"{t:.2f}" for t in self.wall_s)
        sizes = ", ".join(f"{n:,}" for n in self.sizes)
        return (
            f"| {self.name} | {self.against} = {sizes} | {cpu} | {wall} | "
            f"{self.exponent(self.cpu_s):.2f} | {self.exponent(self.wall_s):.2f} |"
        )


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of fn()."""
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def _measure(name: str, against: str, sizes: list[int], make: Callable[[int], Callable[[], object]]) -> Row:
    """`make(n)` prepares the data of size n (not timed) and returns the operation to time; one
    untimed run at the smallest size first (imports, allocator, first-call costs)."""
    make(sizes[0])()
    cpu, wall = [], []
    for n in sizes:
        c, w = _time(make(n))
        cpu.append(c)
        wall.append(w)
    return Row(name, against, sizes, cpu, wall)


def _faces(n: int, classes: int = 100, size: int = 32) -> ArrayDataset:
    g = np.random.default_rng(n)
    images = g.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n) % classes, num_classes=classes, name=f"random{n}")


def row_embedding(sizes: list[int], tmp: Path) -> Row:
    def make(n: int):
        data = _faces(n)
        torch.manual_seed(0)
        model = get_model("mbf_tiny", embedding_size=128, input_size=32).eval()
        out = tmp / f"embed{n}_{len(list(tmp.glob(f'embed{n}_*')))}"  # a fresh cache each call
        return lambda: embed_dataset(model, data, out, batch_size=256, progress=False)

    return _measure("embedding (embed_dataset, mbf_tiny 32 px)", "N", sizes, make)


def row_training_epoch(sizes: list[int], tmp: Path) -> Row:
    def make(n: int):
        data = _faces(n)
        torch.manual_seed(1)
        teacher = get_model("mbf_tiny", embedding_size=128, input_size=32).eval()
        cache = embed_dataset(teacher, data, tmp / f"cache{n}", progress=False)  # reused when it exists
        torch.manual_seed(0)
        task = FaceTask(
            get_model("mbf_tiny", embedding_size=128, input_size=32),
            head=get_head("arcface", 128, data.num_classes),
            distiller=Distiller("l2", lam=1.0, student_dim=128, teacher_dim=128),
            teacher=CachedTeacher(cache),
        )
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.01, log_every=10)
        run = tmp / f"run{n}_{len(list(tmp.glob(f'run{n}_*')))}"  # a fresh run each call
        return lambda: train(task, data, cfg, run, progress=False)

    return _measure("training epoch (train, mbf_tiny + ArcFace + L2 KD, batch 64)", "N", sizes, make)


def _head_step(head: torch.nn.Module, returns_loss: bool, steps: int = 3):
    torch.manual_seed(2)
    x, y = torch.randn(128, 128), torch.randint(0, num_classes_of(head), (128,))
    opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)

    def run() -> None:
        for _ in range(steps):
            out = head(x, y)
            loss = out if returns_loss else torch.nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def row_margin_head(sizes: list[int], mode: str) -> Row:
    """One of "full", "sharded r=1", "sharded r=0.1"; 3 optimizer steps per size."""

    def make(c: int):
        torch.manual_seed(0)
        if mode == "full":
            return _head_step(get_head("arcface", 128, c), returns_loss=False)
        return _head_step(PartialFC("arcface", 128, c, sample_rate=float(mode.split("=")[1])), returns_loss=True)

    return _measure(f"margin head, {mode} (B = 128, d = 128, 3 steps)", "C", sizes, make)


def rows(quick: bool, tmp: Path) -> list[Row]:
    n_embed = [1000, 2000, 4000] if quick else [2000, 4000, 8000]
    n_train = [512, 1024, 2048] if quick else [1024, 2048, 4096]
    classes = [10_000, 20_000, 40_000] if quick else [20_000, 40_000, 80_000]
    return [
        row_embedding(n_embed, tmp),
        row_training_epoch(n_train, tmp),
        *(row_margin_head(classes, mode) for mode in ("full", "sharded r=1", "sharded r=0.1")),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="halved sizes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        measured = rows(args.quick, Path(tmp))
    print(f"torch {torch.__version__}, 1 thread; {time.perf_counter() - t:.0f} s in all")
    print("| operation | sizes | CPU s | wall s | exponent (CPU) | exponent (wall) |")
    print("|---|---|---|---|---|---|")
    for row in measured:
        print(row.line())


if __name__ == "__main__":
    main()
