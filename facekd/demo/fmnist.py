"""A real-data check (full tier): PAD against L2 and KD + IS against KD on Fashion-MNIST.

SynthFaces is made to carry the biases of real face data; this checks the two methods on data
nobody shaped: Fashion-MNIST (70,000 28×28 grey images of 10 product classes), read from Debian's
`dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist`, or `FACEKD_FASHION_MNIST`)
when installed; otherwise the experiment is skipped with a note in the report. Nothing is
downloaded.

Classification students (`small_cnn`, cross-entropy on a linear head) distil a wider `iresnet_mini`
teacher's embedding: L2 (the data-bias paper's KD form, CE + λ·L2 on normalised embeddings), PAD-L2
(the library's default recipe) and KD + Intrinsic Sampling (lists from the teacher's embeddings).
λ and h are chosen on a class-stratified 10 % of the training set held out as validation
(`val_fraction`); the 10,000 test images only produce the reported top-1 accuracy. Three seeds,
paired differences as everywhere in the demo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from facekd.config import DataConfig, RunConfig
from facekd.data.spec import build_dataset
from facekd.demo.bias import sampler_config
from facekd.demo.compare import claim, metric_values, rows_of
from facekd.demo.context import DemoContext
from facekd.demo.pad import pad_block, pad_run_stats, pad_stats_rows
from facekd.demo.registry import Experiment, register
from facekd.demo.report import comparison_table
from facekd.demo.selection import Scorer, select
from facekd.demo.spine import kd_block
from facekd.refo.stages import TrainedRun

PATH_ENV = "FACEKD_FASHION_MNIST"
DEFAULT_PATH = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TEACHER = {"arch": "iresnet_mini", "embedding_size": 64, "epochs": 4}
STUDENT = {"arch": "small_cnn", "embedding_size": 64, "epochs": 2}
LAMBDAS = (1.0, 5.0, 20.0)
IS_DEGREES = (6.0, 12.0, 24.0)
BATCH, LR = 128, 0.05


def data_root() -> Path | None:
    """The Fashion-MNIST folder (all four IDX files, gzipped or not), or None."""
    root = Path(os.environ.get(PATH_ENV, DEFAULT_PATH))
    if all((root / f).exists() or (root / f"{f}.gz").exists() for f in FILES):
        return root
    return None


def data_config(root: Path, split: str = "train") -> DataConfig:
    return DataConfig.model_validate({"kind": "idx", "path": root, "val_fraction": 0.1, "val_seed": 0, "split": split})


def _config(root: Path, net: dict, seed: int, distill: dict | None = None, teacher: dict | None = None, sampler=None):
    cfg: dict = {
        "task": "classification",
        "data": data_config(root),
        "model": {"arch": net["arch"], "embedding_size": net["embedding_size"]},
        "head": {"name": "softmax"},
        "train": {
            "epochs": net["epochs"],
            "batch_size": BATCH,
            "lr": LR,
            "warmup_epochs": 0.2,
            "seed": seed,
            "log_every": 20,
        },
    }
    if distill is not None:
        cfg |= {"distill": distill, "teacher": teacher}
    if sampler is not None:
        cfg |= {"sampler": sampler, "teacher": teacher}
    return RunConfig.model_validate(cfg)


@torch.no_grad()
def top1(run: TrainedRun, dataset) -> float:
    """Top-1 accuracy of a classification run (student + linear head) on `dataset` (no augmentation)."""
    task = run.task.eval()
    head, student = cast(nn.Module, task.head), run.model
    correct = total = 0
    for batch in DataLoader(dataset.without_augmentation(), batch_size=512):
        logits = head(student(batch["image"]))
        correct += int((logits.argmax(1) == batch["label"]).sum())
        total += int(batch["label"].numel())
    return correct / total


class _Setup:
    """The Fashion-MNIST runs of one demo directory: teacher, its cache, scorer, config builders."""

    def __init__(self, ctx: DemoContext, root: Path):
        self.ctx, self.root = ctx, root
        self.train_set = build_dataset(data_config(root))
        self.val_set, self.test_set = build_dataset(data_config(root, "val")), build_dataset(data_config(root, "test"))
        self.teacher = ctx.train(_config(root, TEACHER, 0), "fmnist/teacher")
        cache = ctx.store.embed(self.teacher.model, self.train_set)
        self.teacher_block = {"cache": cache.directory}
        self.scorer = Scorer(
            "validation top-1", f"fmnist-val:{self.val_set.fingerprint()}", lambda r: top1(r, self.val_set)
        )

    def student(self, seed: int, distill: dict | None = None, sampler: dict | None = None) -> RunConfig:
        return _config(self.root, STUDENT, seed, distill, self.teacher_block, sampler)

    def select(self, name: str, values, make) -> dict:
        return select(self.ctx, f"fmnist_{name}", values, make, f"fmnist_{name}", scorer=self.scorer)


def run_fmnist(ctx: DemoContext) -> dict:
    root = data_root()
    if root is None:
        return {
            "skipped": f"Fashion-MNIST not found in {os.environ.get(PATH_ENV, DEFAULT_PATH)} "
            "(apt-get install dataset-fashion-mnist, or set FACEKD_FASHION_MNIST)",
            "rows": [],
            "claims": [],
        }
    su = _Setup(ctx, root)
    sel_l2 = su.select("l2_lambda", LAMBDAS, lambda v, s: su.student(s, kd_block(v)))
    sel_pad = su.select("pad_lambda", LAMBDAS, lambda v, s: su.student(s, pad_block(v)))
    kd = kd_block(sel_l2["best"])
    sel_is = su.select("is_bandwidth_deg", IS_DEGREES, lambda v, s: su.student(s, kd, sampler_config("intrinsic", v)))
    methods = {
        "scratch": lambda s: su.student(s),
        "KD (L2)": lambda s: su.student(s, kd),
        "PAD-L2": lambda s: su.student(s, pad_block(sel_pad["best"])),
        "KD + IS": lambda s: su.student(s, kd, sampler_config("intrinsic", sel_is["best"])),
    }
    jobs = [(make(s), f"fmnist/{name}/seed{s}") for name, make in methods.items() for s in ctx.seeds]
    runs = iter(ctx.train_many(jobs))
    by_method = {name: {s: next(runs) for s in ctx.seeds} for name in methods}
    evals = {name: {s: {"top1": top1(r, su.test_set)} for s, r in by.items()} for name, by in by_method.items()}
    pad = {"PAD-L2": {s: pad_run_stats(r, su.train_set)[0] for s, r in by_method["PAD-L2"].items()}}
    teacher = {"teacher": {0: {"top1": top1(su.teacher, su.test_set)}}}
    rows = rows_of("fmnist", evals) + rows_of("fmnist_teacher", teacher) + pad_stats_rows("fmnist", pad)

    def values(m: str) -> dict[int, float]:
        return metric_values(rows, "fmnist", m, "top1")

    claims = [
        claim(
            "PAD", "PAD-L2 beats L2 on Fashion-MNIST (real data)", values("PAD-L2"), values("KD (L2)"), metric="top-1"
        ),
        claim(
            "data bias",
            "KD + IS beats KD on Fashion-MNIST (real data)",
            values("KD + IS"),
            values("KD (L2)"),
            metric="top-1",
        ),
    ]
    return {
        "rows": rows,
        "claims": claims,
        "selections": [sel_l2, sel_pad, sel_is],
        "n": [len(su.train_set), len(su.val_set), len(su.test_set)],
        "pad": {m: {str(s): st for s, st in by.items()} for m, by in pad.items()},
    }


def report_fmnist(ctx: DemoContext, r: dict) -> str:
    if "skipped" in r:
        return f"Skipped: {r['skipped']}."
    rows = r["rows"]
    names = {m: m for m in dict.fromkeys(row["method"] for row in rows if row["table"] == "fmnist")}
    n_train, n_val, n_test = r["n"]
    return "\n".join(
        [
            f"Fashion-MNIST: {n_train} training images, {n_val} held out for validation (λ, h), {n_test} test images. "
            f"Teacher `{TEACHER['arch']}` ({TEACHER['epochs']} epochs), students `{STUDENT['arch']}` "
            f"({STUDENT['epochs']} epochs); top-1 test accuracy, seeds {ctx.seeds}, Δ paired by seed.",
            "",
            comparison_table(rows, "fmnist_teacher", {"teacher": f"teacher `{TEACHER['arch']}`"}, columns=("top1",)),
            "",
            comparison_table(rows, "fmnist", names, baseline="KD (L2)", columns=("top1",), metric="top1"),
        ]
    )


register(
    Experiment(
        "realdata.fashion_mnist",
        tier="full",
        run=run_fmnist,
        report=report_fmnist,
        title="Real data: PAD vs L2 and KD + IS vs KD on Fashion-MNIST",
        order=70,
    )
)

__all__ = ["data_root", "run_fmnist", "top1"]
