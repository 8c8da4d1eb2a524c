"""Student training throughput on this machine, each comparison measured in one run.

- `teacher`: cached teacher embeddings vs an online teacher forward (same student, same batches,
  ArcFace + λ·L2 KD); the one-off cost of building the cache is printed separately.
- `compile`: the training step (facekd.train.step.Stepper: forward, backward, clip, SGD) with the
  student eager vs `torch.compile`d in place (train.compile); the compile time is printed apart.
- `amp`: the same step in float32 (train.amp: off) vs bf16 autocast (train.amp: bf16).
- `layout`: the same step for the student and for the teacher architecture (ArcFace from scratch),
  networks and images contiguous vs channels_last (train.channels_last).
- `workers`: whole `facekd.train.train` runs (one epoch) with 0, 1 and 2 DataLoader workers.

Timed steps follow untimed warm-up steps; the modes alternate over the repeats and the median
images/s of each is printed with the ratios. Run with one torch thread unless --threads is given.

    .venv/bin/python benchmarks/train_throughput.py [--only teacher,compile,amp,layout,workers]
        [--preset quick] [--batches 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facekd.embed import embed_dataset
from facekd.losses.distiller import Distiller
from facekd.models import get_model
from facekd.models.heads import get_head
from facekd.synthfaces import SynthFacesConfig, make_synthfaces
from facekd.tasks import CachedTeacher, FaceTask, OnlineTeacher
from facekd.train import TrainConfig, train
from facekd.train.step import Stepper, mixed_precision


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="teacher,compile,amp,layout,workers", help="comma-separated comparisons")
    ap.add_argument("--preset", default="default", help="SynthFaces preset (quick/default/full)")
    ap.add_argument("--teacher", default="iresnet_tiny")
    ap.add_argument("--student", default="mbf_tiny")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args()


def _alternate(modes: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median images/s of each mode, the order of the modes reversed on every other repeat."""
    speeds: dict[str, list[float]] = {m: [] for m in modes}
    names = list(modes)
    for r in range(repeats):
        for m in names if r % 2 == 0 else names[::-1]:
            speeds[m].append(modes[m]())
    for m, s in speeds.items():
        print(f"  {m:<22} {statistics.median(s):8.1f} img/s   (runs: {', '.join(f'{v:.0f}' for v in s)})")
    return {m: statistics.median(s) for m, s in speeds.items()}


def _timed_steps(stepper: Stepper, batches: list[dict], warmup: int) -> float:
    """Images/s of `stepper` over `batches` after `warmup` untimed steps."""
    stepper.model.train()
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        stepper.micro_batch(batch, i, last=True)
        stepper.optimizer_step(0.01)
    return (len(batches) - warmup) * len(batches[0]["image"]) / (time.perf_counter() - start)


def _stepper(task: torch.nn.Module, amp: bool | str = False) -> Stepper:
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4)
    precision = mixed_precision(TrainConfig(amp=amp), torch.device("cpu"))
    return Stepper(task, opt, precision, list(task.student.parameters()), 5.0, 1)


def compare_teacher(args, data, batches) -> None:
    size = data.image_size
    torch.manual_seed(0)
    teacher = get_model(args.teacher, embedding_size=args.dim, input_size=size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = embed_dataset(teacher, data, tmp, progress=False)
        build_s = time.perf_counter() - t

        def run(mode: str) -> float:
            torch.manual_seed(1)
            student = get_model(args.student, embedding_size=args.dim, input_size=size)
            provider = CachedTeacher(cache) if mode == "cached" else OnlineTeacher(teacher)
            distiller = Distiller("l2", lam=1.0, student_dim=args.dim, teacher_dim=args.dim)
            task = FaceTask(student, get_head("arcface", args.dim, data.num_classes), None, distiller, provider)
            return _timed_steps(_stepper(task), batches, args.warmup)

        print("teacher: cached embeddings vs online forward")
        s = _alternate({"cached teacher": lambda: run("cached"), "online teacher": lambda: run("online")}, args.repeats)
    print(f"  ratio cached / online: {s['cached teacher'] / s['online teacher']:.2f}x")
    print(f"  one-off cache build: {len(data)} images in {build_s:.1f} s ({len(data) / build_s:.0f} img/s)")


def _scratch_task(args, data, compiled: bool = False, arch: str | None = None, channels_last: bool = False) -> FaceTask:
    torch.manual_seed(1)
    student = get_model(arch or args.student, embedding_size=args.dim, input_size=data.image_size)
    if channels_last:
        student.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if compiled:
        student.compile()
    return FaceTask(student, head=get_head("arcface", args.dim, data.num_classes))


def compare_compile(args, data, batches) -> None:
    print(f"compile: {args.student} step eager vs torch.compile (train.compile)")
    t = time.perf_counter()
    compiled = _stepper(_scratch_task(args, data, compiled=True))
    _timed_steps(compiled, batches[: args.warmup + 1], args.warmup)  # the first steps compile
    print(f"  compile time (first steps): {time.perf_counter() - t:.1f} s")
    eager = _stepper(_scratch_task(args, data))
    s = _alternate(
        {
            "eager": lambda: _timed_steps(eager, batches, args.warmup),
            "torch.compile": lambda: _timed_steps(compiled, batches, args.warmup),
        },
        args.repeats,
    )
    print(f"  ratio compiled / eager: {s['torch.compile'] / s['eager']:.2f}x")


def compare_amp(args, data, batches) -> None:
    print(f"amp: {args.student} step in float32 vs bf16 autocast (CPU)")
    modes = {
        "amp off (float32)": lambda: _timed_steps(_stepper(_scratch_task(args, data)), batches, args.warmup),
        "amp bf16": lambda: _timed_steps(_stepper(_scratch_task(args, data), "bf16"), batches, args.warmup),
    }
    s = _alternate(modes, args.repeats)
    print(f"  ratio bf16 / float32: {s['amp bf16'] / s['amp off (float32)']:.2f}x")


def compare_layout(args, data, batches) -> None:
    last = [{**b, "image": b["image"].contiguous(memory_format=torch.channels_last)} for b in batches]
    for arch in (args.student, args.teacher):
        print(f"layout: {arch} step, contiguous vs channels_last (train.channels_last)")
        modes = {
            "contiguous": lambda a=arch: _timed_steps(
                _stepper(_scratch_task(args, data, arch=a)), batches, args.warmup
            ),
            "channels_last": lambda a=arch: _timed_steps(
                _stepper(_scratch_task(args, data, arch=a, channels_last=True)), last, args.warmup
            ),
        }
        s = _alternate(modes, args.repeats)
        print(f"  ratio channels_last / contiguous: {s['channels_last'] / s['contiguous']:.2f}x")


def compare_workers(args, data, _batches) -> None:
    """Whole train() runs of one epoch over the first batch_size × (warmup + batches) images."""
    n = args.batch_size * (args.batches + args.warmup)
    print(f"workers: train() over {n} images, one epoch, num_workers 0 / 1 / 2")

    def run(workers: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.01, log_every=1, num_workers=workers)
            train(_scratch_task(args, data), data, cfg, tmp, sampler=np.arange(n), progress=False)
            lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        return statistics.median(r["samples_per_s"] for r in lines[args.warmup :])

    s = _alternate({f"num_workers={w}": (lambda w=w: run(w)) for w in (0, 1, 2)}, args.repeats)
    base = s["num_workers=0"]
    print(f"  ratio 1 worker / 0: {s['num_workers=1'] / base:.2f}x, 2 workers / 0: {s['num_workers=2'] / base:.2f}x")


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    data = make_synthfaces(SynthFacesConfig.preset(args.preset)).train
    n = args.batch_size * (args.batches + args.warmup)
    if n > len(data):
        raise SystemExit(f"the {args.preset} train set has {len(data)} images, fewer than {n} needed")
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(n)), batch_size=args.batch_size)
    batches = list(loader)
    print(
        f"SynthFaces {args.preset} ({data.image_size}px), student {args.student}, teacher {args.teacher}, "
        f"d={args.dim}, batch {args.batch_size}, {args.batches} timed steps after {args.warmup} × {args.repeats} "
        f"repeats, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    comparisons = {
        "teacher": compare_teacher,
        "compile": compare_compile,
        "amp": compare_amp,
        "layout": compare_layout,
        "workers": compare_workers,
    }
    for name in args.only.split(","):
        comparisons[name](args, data, batches)


if __name__ == "__main__":
    main()
