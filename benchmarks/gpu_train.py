"""Training images/s on a GPU: facekd's step with the full and the sharded margin head, each against
a minimal reference loop (backbone + full-softmax ArcFace, nothing else) in the same run.

Per (backbone, batch, classes): the reference loop, then facekd's step (`facekd.train.step.Stepper`
after `facekd.train.loop.set_up_device`: channels_last, cudnn.benchmark, bf16 autocast, float32
head, clip 5 on the backbone, SGD) with the full ArcFace head and with `PartialFC` (one process;
sample rate 1.0 up to 100k classes, 0.3 above, the run-config default). Inputs are random images
already on the device, so the loader is not measured. Untimed warm-up steps, then timed steps
between two device synchronisations; peak device memory per configuration.

    python benchmarks/gpu_train.py --out train.json [--smoke] [--budget-s 240]

`--smoke` runs tiny sizes on any device (CPU included) to test the script end to end. Rows not
reached within the time budget are written as "not run (time budget)".
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import partial
from itertools import product
from pathlib import Path

import torch
import torch.nn.functional as F

from facekd.models import get_model
from facekd.models.heads import get_head
from facekd.models.partial_fc import PartialFC
from facekd.tasks import FaceTask
from facekd.train import TrainConfig
from facekd.train.loader import to_device
from facekd.train.loop import set_up_device
from facekd.train.step import Stepper, mixed_precision

FULL = {"archs": ["mbf", "r50"], "size": 112, "batches": [128, 512], "classes": [93_431, 360_232, 2_059_906]}
SMOKE = {"archs": ["mbf_tiny"], "size": 32, "batches": [4, 8], "classes": [100, 400, 2_000]}
SHARD_RATE_ABOVE, SAMPLED_RATE = 100_000, 0.3  # facekd.build.head_sharding's defaults
DIM = 512


@dataclass
class Setup:
    device: torch.device
    size: int
    warmup: int
    steps: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, batch_size: int, s: Setup) -> float:
    """Images/s of `step()` over `s.steps` steps after `s.warmup` untimed ones."""
    for _ in range(s.warmup):
        step()
    _sync(s.device)
    start = time.perf_counter()
    for _ in range(s.steps):
        step()
    _sync(s.device)
    return s.steps * batch_size / (time.perf_counter() - start)


def reference(arch: str, batch: int, classes: int, s: Setup) -> float:
    """The minimal loop: backbone under bf16 autocast, ArcFace (s=64, m=0.5) on all C centres, SGD."""
    net = get_model(arch, embedding_size=DIM, input_size=s.size).to(s.device).train()
    w = torch.nn.Parameter(0.01 * torch.randn(classes, DIM, device=s.device))
    opt = torch.optim.SGD([*net.parameters(), w], lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, s.size, s.size, device=s.device)
    y = torch.randint(0, classes, (batch,), device=s.device)

    def step():
        with torch.autocast(s.device.type, dtype=torch.bfloat16):
            emb = net(x)
        cos = F.linear(F.normalize(emb.float()), F.normalize(w)).clamp(-1, 1)
        target = torch.cos(torch.acos(cos.gather(1, y[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)) + 0.5)
        loss = F.cross_entropy(64.0 * cos.scatter(1, y[:, None], target), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _timed(step, batch, s)


def facekd_step(arch: str, batch: int, head: torch.nn.Module, classes: int, s: Setup) -> float:
    """facekd's step (as train() runs it) with `head` (full ArcFace or PartialFC)."""
    task = FaceTask(get_model(arch, embedding_size=DIM, input_size=s.size), head=head)
    cfg = TrainConfig(amp="bf16")
    set_up_device(task, cfg, s.device)
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4)
    stepper = Stepper(task.train(), opt, mixed_precision(cfg, s.device), list(task.student.parameters()), 5.0, 1)
    images = torch.randn(batch, 3, s.size, s.size, device=s.device)
    labels = torch.randint(0, classes, (batch,), device=s.device)

    def step():
        stepper.micro_batch(to_device({"image": images, "label": labels}, s.device, s.device.type == "cuda"), 0, True)
        stepper.optimizer_step(0.01)

    return _timed(step, batch, s)


def _heads(classes: int, device: torch.device) -> dict[str, torch.nn.Module]:
    """The full ArcFace head (initialised on the device) and PartialFC at its default rate."""
    with torch.device(device):
        full = get_head("arcface", DIM, classes)
    rate = 1.0 if classes <= SHARD_RATE_ABOVE else SAMPLED_RATE
    return {
        "full head": full,
        f"sharded head (r={rate})": PartialFC("arcface", DIM, classes, sample_rate=rate).to(device),
    }


def _measure(fn, device: torch.device) -> dict:
    """{"images_per_s", "peak_memory_gb"} of fn(), or {"status": "out of memory"}."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        speed = fn()
    except torch.OutOfMemoryError:
        return {"status": "out of memory"}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": round(speed, 1), "peak_memory_gb": None if peak is None else round(peak, 2)}


def _modes(arch: str, batch: int, classes: int, heads: dict, s: Setup) -> dict:
    """The measurements of one configuration: the reference loop first, then facekd's heads."""
    modes = {"reference loop": partial(reference, arch, batch, classes, s)}
    return modes | {name: partial(facekd_step, arch, batch, head, classes, s) for name, head in heads.items()}


def run(sizes: dict, s: Setup, budget_s: float, save) -> list[dict]:
    """Rows for every (arch, batch, classes, mode), each passed to `save(rows)` once measured (a
    killed run keeps what it measured); past the budget, rows say they were not run."""
    rows: list[dict] = []
    start = time.perf_counter()
    for classes in sizes["classes"]:
        heads = _heads(classes, s.device)
        for arch, batch in product(sizes["archs"], sizes["batches"]):
            key = {"arch": arch, "batch": batch, "classes": classes}
            ref = None
            for mode, fn in _modes(arch, batch, classes, heads, s).items():
                if time.perf_counter() - start > budget_s:
                    rows.append({**key, "mode": mode, "status": "not run (time budget)"})
                    continue
                row = {**key, "mode": mode, **_measure(fn, s.device)}
                ref = row.get("images_per_s") if mode == "reference loop" else ref
                if ref and "images_per_s" in row:
                    row["vs_reference"] = round(row["images_per_s"] / ref, 3)
                rows.append(row)
                save(rows)
                print(json.dumps(row), flush=True)
        del heads
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop starting new rows after this")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke to test the script on CPU")
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for the reference loop too (facekd's step sets it)
    sizes = SMOKE if args.smoke else FULL
    setup = Setup(device, sizes["size"], warmup=1 if args.smoke else 3, steps=2 if args.smoke else 10)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    head = {"device": name, "torch": torch.__version__, "smoke": args.smoke, "precision": "bf16"}
    t = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict], complete: bool = False) -> None:
        result = {**head, "complete": complete, "seconds": round(time.perf_counter() - t, 1), "rows": rows}
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    save(run(sizes, setup, args.budget_s, save), complete=True)


if __name__ == "__main__":
    main()
