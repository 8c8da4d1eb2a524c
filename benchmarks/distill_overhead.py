"""Training-step time of a face student with plain L2 distillation vs PAD-L2 vs each weighting.

One training step = student forward, ArcFace head + CE, distillation loss (teacher embeddings are
given, as from an EmbeddingCache), backward, SGD step. All configurations run in one process,
interleaved (config A, B, C, … then again), and the median step time per configuration is
compared with plain L2 (uniform weighting). A second, less noisy measure times the Distiller alone
(forward + backward on a fixed embedding) and reports its extra time over plain L2 as a fraction of
the full L2 step. The bar: PAD adds ≤ 5 % per step.

    .venv/bin/python benchmarks/distill_overhead.py                       # mbf_tiny, 32 px, CPU
    .venv/bin/python benchmarks/distill_overhead.py --device cuda --batch-size 256
    .venv/bin/python benchmarks/distill_overhead.py --out overhead.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from facekd.losses.distiller import Distiller, Features
from facekd.models import get_model
from facekd.models.heads import get_head
from facekd.utils import save_json

CONFIGS = {
    "l2 uniform": {"loss": "l2", "weighting": "uniform"},
    "l2 pad": {"loss": "l2", "weighting": "pad"},  # the default recipe: one σ per sample, backbone input
    "l2 pad (per_dim)": {"loss": "l2", "weighting": "pad", "options": {"sigma": "per_dim"}},
    "l2 soft_exp": {"loss": "l2", "weighting": "soft_exp"},
    "l2 soft_poly": {"loss": "l2", "weighting": "soft_poly"},
    "l2 hard_mining": {"loss": "l2", "weighting": "hard_mining"},
    "l2 hard_discarding": {"loss": "l2", "weighting": "hard_discarding"},
    "l2 warmup": {"loss": "l2", "weighting": "warmup", "options": {"warmup_steps": 1000}},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mbf_tiny")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--embedding-size", type=int, default=512)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per config before timing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    B, d = args.batch_size, args.embedding_size
    x = torch.randn(B, 3, args.input_size, args.input_size, device=device)
    labels = torch.randint(0, args.num_classes, (B,), device=device)
    teacher = torch.nn.functional.normalize(torch.randn(B, d, device=device), dim=1)

    setups = {}
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        student = get_model(args.model, embedding_size=d, input_size=args.input_size).to(device).train()
        head = get_head("arcface", d, args.num_classes).to(device)
        distiller = Distiller.from_config(cfg, d, d, student=student, input_size=args.input_size).to(device).train()
        params = [*student.parameters(), *head.parameters(), *distiller.parameters()]
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        setups[name] = (student, head, distiller, opt)

    def step(name: str, i: int) -> None:
        student, head, distiller, opt = setups[name]
        opt.zero_grad(set_to_none=True)
        emb = student(x)
        cls = torch.nn.functional.cross_entropy(head(emb, labels), labels)
        dl, _ = distiller(Features(emb), Features(teacher), i)
        (cls + dl).backward()
        opt.step()

    for name in CONFIGS:
        for i in range(args.warmup):
            step(name, i)
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _r in range(args.repeats):
        for name in CONFIGS:
            _sync(device)
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(name, 10 + i)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / args.steps)

    # the distillation part alone (forward + backward of the Distiller on a fixed embedding): a
    # less noisy view of the same overhead on a shared machine
    emb0 = torch.randn(B, d, device=device)
    widths = {name: setups[name][2].var_branches[0].fc.in_features for name in CONFIGS if setups[name][2].is_pad}
    alone: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _r in range(args.repeats):
        for name in CONFIGS:
            distiller = setups[name][2]
            _sync(device)
            t0 = time.perf_counter()
            for i in range(args.steps):
                emb = emb0.clone().requires_grad_(True)
                feat = torch.randn(B, widths[name], device=device) if name in widths else None
                dl, _ = distiller(Features(emb, backbone=feat), Features(teacher), 10 + i)
                dl.backward()
            _sync(device)
            alone[name].append((time.perf_counter() - t0) / args.steps)

    base = statistics.median(times["l2 uniform"])
    print(
        f"model={args.model} input={args.input_size}px batch={B} d={d} classes={args.num_classes} "
        f"device={device} threads={args.threads} repeats={args.repeats}×{args.steps} steps"
    )
    print(
        f"{'configuration':24s} {'median ms/step':>15s} {'vs l2 uniform':>14s} {'distill alone ms':>17s} "
        f"{'extra vs l2, % of step':>23s}"
    )
    result = {"args": vars(args), "median_s": {}, "ratio": {}, "distill_alone_s": {}, "extra_fraction_of_step": {}}
    alone_base = statistics.median(alone["l2 uniform"])
    for name in CONFIGS:
        med, a = statistics.median(times[name]), statistics.median(alone[name])
        extra = (a - alone_base) / base
        result["median_s"][name], result["ratio"][name] = med, med / base
        result["distill_alone_s"][name], result["extra_fraction_of_step"][name] = a, extra
        print(f"{name:24s} {med * 1e3:15.2f} {med / base:14.3f} {a * 1e3:17.3f} {100 * extra:+22.2f}%")
    pad = result["ratio"]["l2 pad"]
    extra = result["extra_fraction_of_step"]["l2 pad"]
    print(
        f"PAD (default recipe) overhead: {100 * (pad - 1):+.1f} % per step measured end to end, "
        f"{100 * extra:+.1f} % from the distillation part alone (bar: ≤ +5 %): "
        f"{'PASS' if max(pad - 1, extra) <= 0.05 else 'FAIL'}"
    )
    if args.out:
        save_json(args.out, result)


if __name__ == "__main__":
    main()
