"""Student training throughput: cached teacher embeddings vs an online teacher forward.

Both modes train the same student (same init) on the same pre-loaded batches with the same
optimizer step (SGD, clip 5), ArcFace + λ·L2 KD; only where the teacher embedding comes from
differs. Warm-up steps are excluded; the two modes alternate over several repeats and the median
images/s of each is printed with their ratio. The cost of building the cache (one teacher forward
per training image, once) is printed separately.

    .venv/bin/python benchmarks/train_throughput.py [--preset quick] [--batches 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from facekd.synthfaces import SynthFacesConfig, make_synthfaces
from facekd.embed import embed_dataset
from facekd.losses.distiller import Distiller
from facekd.models import get_model
from facekd.models.heads import get_head
from facekd.tasks import CachedTeacher, FaceTask, OnlineTeacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="SynthFaces preset (quick/default/full)")
    ap.add_argument("--teacher", default="iresnet_tiny")
    ap.add_argument("--student", default="mbf_tiny")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = make_synthfaces(SynthFacesConfig.preset(args.preset)).train
    size = data.image_size
    torch.manual_seed(0)
    teacher = get_model(args.teacher, embedding_size=args.dim, input_size=size).eval()
    n = args.batch_size * (args.batches + args.warmup)
    if n > len(data):
        raise SystemExit(f"the {args.preset} train set has {len(data)} images, fewer than {n} needed")
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(n)), batch_size=args.batch_size)
    batches = list(loader)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = embed_dataset(teacher, data, tmp, progress=False)
        build_s = time.perf_counter() - t

        def run(mode: str) -> float:
            torch.manual_seed(1)
            student = get_model(args.student, embedding_size=args.dim, input_size=size)
            provider = CachedTeacher(cache) if mode == "cached" else OnlineTeacher(teacher)
            task = FaceTask(
                student,
                head=get_head("arcface", args.dim, data.num_classes),
                distiller=Distiller("l2", lam=1.0, student_dim=args.dim, teacher_dim=args.dim),
                teacher=provider,
            ).train()
            opt = torch.optim.SGD(
                [p for p in task.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4
            )
            for i, batch in enumerate(batches):
                if i == args.warmup:
                    start = time.perf_counter()
                loss, _ = task(batch, i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(task.student.parameters(), 5.0)
                opt.step()
            return args.batches * args.batch_size / (time.perf_counter() - start)

        speeds: dict[str, list[float]] = {"cached": [], "online": []}
        for r in range(args.repeats):
            for mode in ("cached", "online") if r % 2 == 0 else ("online", "cached"):
                speeds[mode].append(run(mode))
    cached, online = statistics.median(speeds["cached"]), statistics.median(speeds["online"])
    print(
        f"SynthFaces {args.preset} ({size}px), student {args.student}, teacher {args.teacher}, d={args.dim}, "
        f"batch {args.batch_size}, {args.batches} timed steps × {args.repeats} repeats, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"cached teacher : {cached:8.1f} img/s   (runs: {', '.join(f'{s:.0f}' for s in speeds['cached'])})")
    print(f"online teacher : {online:8.1f} img/s   (runs: {', '.join(f'{s:.0f}' for s in speeds['online'])})")
    print(f"ratio cached / online: {cached / online:.2f}x")
    print(f"one-off cache build: {len(data)} images in {build_s:.1f} s ({len(data) / build_s:.0f} img/s)")


if __name__ == "__main__":
    main()
