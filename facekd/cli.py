"""The `facekd` command: thin wrappers over the library (parse, call, print).

Commands here: demo, train, embed, eval. The others come from modules with a
`register(app: typer.Typer) -> None` function listed in `COMMAND_MODULES` (imported at start-up;
an import error surfaces, nothing is skipped silently). Every command takes `--threads N` (torch
and OpenCV CPU threads): a command that does not declare it gets it from `with_threads`.

One error boundary (`report_error`): bad input (ValueError, FileNotFoundError, a config error,
a run directory locked by another process) and faults of the environment (a read-only or full
filesystem, a directory where a file belongs, permissions: OSError) print one line `error: ...`
naming the path and the cause on stderr and exit with code 2, also when raised inside a
DataLoader worker. Any other exception is a bug: a line saying so, its traceback, exit code 1.
Set FACEKD_DEBUG=1 to see the traceback of every error.
"""

from __future__ import annotations

import errno
import functools
import importlib
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import typer
from pydantic import ValidationError


class _App(typer.Typer):
    """typer.Typer with facekd's error boundary (`report_error`)."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:
            if os.environ.get("FACEKD_DEBUG"):
                raise
            sys.exit(report_error(e))


def report_error(e: Exception) -> int:
    """Print `e` for the user and return the exit code.

    Bad input and the environment (`user_error_line` is not None) → one line `error: ...` on
    stderr, exit code 2. Anything else is a bug in facekd: a line saying so, then the traceback,
    exit code 1.
    """
    line = user_error_line(e)
    if line is not None:
        print(f"error: {line}", file=sys.stderr)
        return 2
    print(
        f"facekd: internal error ({type(e).__name__}); this is a bug: please report it with the traceback below",
        file=sys.stderr,
    )
    traceback.print_exception(e, file=sys.stderr)
    return 1


# errno → the cause in plain words (the OS's own, e.g. "Read-only file system", say nothing of what to do).
_OS_CAUSES = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system; write the output somewhere writable",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "a component of the path is a file, expected a directory",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.EIO: "input/output error (a damaged disk or a lost network filesystem?)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
}


def user_error_line(e: BaseException) -> str | None:
    """The one-line message of an error caused by the input or the environment, else None (a bug).

    Such errors are ValueError (facekd's bad-input error, config errors included), pydantic's
    ValidationError, OSError (a missing file, a read-only or full filesystem, a directory where a
    file belongs, permissions) and FloatingPointError (a diverged run). One raised inside a
    DataLoader worker arrives re-raised with the worker's traceback inside its message: the line
    is then the original message.
    """
    if isinstance(e, ValidationError):
        return _one_line(e)
    if not isinstance(e, (ValueError, OSError, FloatingPointError)):
        return None
    if isinstance(e, OSError) and e.errno is not None:
        return _os_error_line(e.errno, e.strerror, e.filename, e.filename2)
    text = _unwrap_worker_message(str(e))
    m = _OS_TEXT.match(text)  # an OSError re-raised from a worker keeps only its text
    if m:
        return _os_error_line(int(m["errno"]), m["strerror"], m["filename"])
    return " ".join(text.split())


def _os_error_line(code: int, strerror: str | None, *filenames) -> str:
    """`path: cause` of an OSError raised by the OS (or by facekd in its form)."""
    standard = strerror in (None, os.strerror(code))  # else facekd's own words: keep them
    cause = (_OS_CAUSES.get(code) or strerror or os.strerror(code)) if standard else strerror
    paths = [os.fsdecode(f) for f in filenames if f is not None]
    return f"{' -> '.join(paths)}: {cause}" if paths else str(cause)


_OS_TEXT = re.compile(r"^\[Errno (?P<errno>\d+)\] (?P<strerror>[^:]+)(?:: '(?P<filename>.*)')?$")
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*\nOriginal Traceback")


def _unwrap_worker_message(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (its message holds the
    worker's traceback: the original `Type: message` follows the last indented frame line)."""
    if not _WORKER.match(text):
        return text
    lines = text.rstrip().splitlines()
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=1)
    original = " ".join(" ".join(lines[last_frame + 1 :]).split())
    return re.sub(r"^[\w.]+: ", "", original, count=1) or text


Preset = Literal["quick", "default", "full"]
_PRESETS = ("quick", "default", "full")
THREADS_HELP = "CPU threads of torch and OpenCV (default: theirs)"


def _one_line(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())


app = _App(
    help="facekd: knowledge distillation for face recognition (data-bias, PAD, ReFO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add commands with `register(app)`.
COMMAND_MODULES: list[str] = [
    "facekd.bias.commands",  # density, uniformity, resample
    "facekd.refo.commands",  # intrinsic-dim, refo
    "facekd.evaluate.commands",  # eval-ijb, eval-reid
    "facekd.onnx.commands",  # export, check-onnx
    "facekd.quant.commands",  # quantize, qat
    "facekd.data.commands",  # pack-rec, inspect-rec, export-synth
    "facekd.losses.commands",  # pad-variance
    "facekd.synthpersons.commands",  # export-synth-persons
]


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="the ≤ 2 minute subset"),
    full: bool = typer.Option(False, "--full", help="every experiment (long; resumable)"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default runs/demo/<tier>)"),
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="number of student seeds (0..N-1)"),
    only: list[str] | None = typer.Option(None, "--only", help="run only these experiments (name or prefix)"),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    workers: int | None = typer.Option(None, "--workers", min=1, help="training processes side by side (default 2)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train teacher and students on SynthFaces, evaluate, and write report.md and summary.json."""
    from facekd.demo import run_demo, tier_settings

    if quick and full:
        raise typer.BadParameter("--quick and --full exclude each other")
    tier = "quick" if quick else "full" if full else "default"
    settings = tier_settings(tier, list(range(seeds)) if seeds else None)
    if threads:
        settings = settings.model_copy(update={"threads": threads})
    if workers:
        settings = settings.model_copy(update={"workers": workers})
    report = run_demo(tier, out=out, only=only, progress=progress, settings=settings)
    typer.echo(report.read_text())


def _set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads in torch's intra-op pool and OpenCV (no-op for None)."""
    if threads:
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)


def with_threads(callback: Callable) -> Callable:
    """`callback` with a `--threads N` option (`_set_threads(N)` before it runs), unless it
    declares `threads` itself: how every command registered from another module gets it."""
    signature = inspect.signature(callback)
    if "threads" in signature.parameters:
        return callback

    @functools.wraps(callback)
    def wrapped(*args, threads: int | None = None, **kwargs):
        _set_threads(threads)
        return callback(*args, **kwargs)

    option = typer.Option(None, "--threads", min=1, help=THREADS_HELP)
    param = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=option, annotation=int | None)
    wrapped.__signature__ = signature.replace(parameters=[*signature.parameters.values(), param])  # type: ignore[attr-defined]
    wrapped.__annotations__ = {**callback.__annotations__, "threads": int | None}
    return wrapped


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run config"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. train.lr=0.05"),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="continue from run_dir/checkpoints/last.pt, or start over"
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a model from a YAML config (see docs/training.md). The run directory is locked while
    it runs; a finished run with the same config and data is reused, a different one refused."""
    from facekd import dist
    from facekd.build import run_training
    from facekd.config import load_config
    from facekd.evaluate.students import final_metrics, format_final

    cfg = load_config(config, overrides or [])
    _set_threads(threads)
    task = run_training(cfg, resume=resume, progress=progress)
    if dist.is_main():
        typer.echo(f"done: {cfg.run_dir / 'backbone.pth'}")
        summary = format_final(final_metrics(cfg, task))
        if summary:
            typer.echo(summary)


def _data_config(data: str, kind: str, split: str, val_fraction: float | None = None, val_seed: int = 0):
    """The DataConfig of `--kind` / `--data` / `--split` (+ `--val-fraction` / `--val-seed`)
    (ConfigError, one line, on a bad combination)."""
    from facekd.config import ConfigError, DataConfig, format_validation_error

    raw: dict[str, Any] = {
        "kind": kind,
        "split": split,
        **({"preset": data} if kind == "synthfaces" else {"path": data}),
    }
    if val_fraction is not None:
        raw |= {"val_fraction": val_fraction, "val_seed": val_seed}
    try:
        return DataConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "--kind / --data / --split / --val-fraction")) from None


def _load_model(
    arch: str | None,
    checkpoint: Path | None,
    embedding_size: int | None,
    input_size: int | None,
    onnx: Path | None = None,
    device: str = "cpu",
):
    """The network of `--onnx`, or `--arch` with the weights of `--checkpoint` (sizes not given
    are read from it), else `--arch` with random weights (with a warning): `facekd.build.load_network`."""
    from facekd.build import load_network

    if onnx is None and arch is None:
        raise typer.BadParameter("give --arch (with --checkpoint), or --onnx")
    if onnx is None and checkpoint is None:
        typer.echo(f"warning: no --checkpoint, {arch} has random weights", err=True)
    return load_network(arch, checkpoint, onnx, embedding_size, input_size, device=device)


_ARCH_HELP = "model name (facekd.models.list_models()); not with --onnx"
_ONNX_HELP = "an ONNX recognition model (insightface model zoo, facekd export) instead of --arch/--checkpoint"


@app.command()
def embed(
    arch: str | None = typer.Option(None, "--arch", help=_ARCH_HELP),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="backbone.pth"),
    onnx: Path | None = typer.Option(None, "--onnx", help=_ONNX_HELP),
    data: str = typer.Option("default", "--data", help="SynthFaces preset, or a path for --kind"),
    kind: str = typer.Option(
        "synthfaces", "--kind", help="synthfaces | recordio | folder | list | arrays | idx | market1501 | dukemtmc"
    ),
    split: str = typer.Option(
        "train", "--split", help="train | test (synthfaces, idx) | query | gallery (re-ID) | val (--val-fraction)"
    ),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="hold out this fraction of train (per class) as split val, as data.val_fraction"
    ),
    val_seed: int = typer.Option(0, "--val-seed", help="seed of the held-out rows (data.val_seed)"),
    out: Path = typer.Option(..., "--out", help="EmbeddingCache directory"),
    flip: bool = typer.Option(False, "--flip", help="flip-sum, as insightface"),
    normalize: bool = typer.Option(True, "--normalize/--raw"),
    embedding_size: int | None = typer.Option(None, "--embedding-size"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Embed a dataset into an EmbeddingCache (resumable; reused when it matches; `--out` is locked
    while rows are written)."""
    from facekd import dist
    from facekd.build import build_dataset
    from facekd.embed import embed_dataset

    data_cfg = _data_config(data, kind, split, val_fraction, val_seed)
    _set_threads(threads)
    dist.init_from_env()  # under torchrun each rank embeds its shard and rank 0 assembles the cache
    dataset = build_dataset(data_cfg)
    model = _load_model(arch, checkpoint, embedding_size, dataset.image_size, onnx, str(dist.resolve_device("auto")))
    cache = embed_dataset(model, dataset, out, flip=flip, batch_size=batch_size, normalize=normalize, progress=progress)
    if dist.is_main():
        typer.echo(f"{cache.directory}: {cache.embeddings.shape[0]} × {cache.embeddings.shape[1]} float32")


@app.command("eval")
def eval_(
    arch: str | None = typer.Option(None, "--arch", help=_ARCH_HELP + "; default: the run's (run_dir/config.yaml)"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="a run directory, or backbone.pth"),
    onnx: Path | None = typer.Option(None, "--onnx", help=_ONNX_HELP),
    task: str | None = typer.Option(
        None, "--task", help="face | classification | metric; default: the run's task, else face"
    ),
    split: str = typer.Option(
        "test", "--split", help="classification / metric: the split (test, val with the run's val_fraction, ...)"
    ),
    kind: str | None = typer.Option(None, "--kind", help="classification / metric: data kind (default: the run's)"),
    data: str | None = typer.Option(None, "--data", help="with --kind: its path (or SynthFaces preset)"),
    head: Path | None = typer.Option(None, "--head", help="classification: head.pth (default: beside the backbone)"),
    ks: str = typer.Option("1,2,4,8", "--ks", help="metric: the K of Recall@K"),
    bins: list[Path] = typer.Option([], "--bin", help="insightface .bin set(s): `--bin lfw.bin cfp_fp.bin ...`"),
    more_bins: list[Path] | None = typer.Argument(
        None, metavar="BIN", help="further .bin sets after --bin", show_default=False
    ),
    preset: str = typer.Option("default", "--preset", help="SynthFaces preset whose test pairs are used (no --bin)"),
    embedding_size: int | None = typer.Option(None, "--embedding-size"),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="flip-sum test embeddings (no --bin; .bin always flips)"),
    step: int = typer.Option(0, "--step", help="the training step printed in each .bin line"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto (the local GPU if any) | cpu | cuda:N"),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    out: Path | None = typer.Option(None, "--out", help="also write the result JSON (and roc.png) here"),
) -> None:
    """Evaluate a student as its task reports it (the run's task, or --task). classification:
    top-1 / top-5 and per-class accuracy with the run's head.pth; metric: Recall@K (CMC / mAP on
    re-ID data); both on --split of the run's data. face (verification): with --bin,
    insightface's Accuracy-Flip on each .bin set, printed in its log format; without, SynthFaces
    test pairs, TAR@FAR (both conventions) and 10-fold accuracy."""
    from facekd.dist import resolve_device
    from facekd.evaluate.commands import eval_student, eval_task

    _set_threads(threads)
    chosen = eval_task(checkpoint, task)
    if chosen != "face":
        if bins or more_bins or onnx is not None:
            raise typer.BadParameter(f".bin sets and --onnx are face verification, not task {chosen}")
        data_cfg = _data_config(data, kind, split) if kind is not None and data is not None else None
        if (kind is None) != (data is None):
            raise typer.BadParameter("--kind and --data go together (the data to evaluate on)")
        eval_student(checkpoint, arch, chosen, split, data_cfg, head, ks, batch_size, device, out)
        return
    arch = arch or (None if onnx is not None else _run_arch(checkpoint))
    if more_bins and not bins:
        raise typer.BadParameter(f"unexpected argument {more_bins[0]}; .bin sets go after --bin")
    for path in bins + list(more_bins or []):
        if not path.is_file():
            raise FileNotFoundError(f"verification set {path} does not exist")
    if bins:
        model = _load_model(arch, checkpoint, embedding_size, None, onnx, str(resolve_device(device)))
        source = {"arch": arch, "checkpoint": _str_or_none(checkpoint), "onnx": _str_or_none(onnx)}
        _eval_bins(model, bins + list(more_bins or []), step, batch_size, out, source)
        return
    import numpy as np
    import torch

    from facekd.embed import embed_batch
    from facekd.evaluate.verification import evaluate_pairs, plot_roc
    from facekd.synthfaces import SynthFacesConfig, make_synthfaces
    from facekd.utils import save_json

    if preset not in _PRESETS:
        raise typer.BadParameter(f"--preset must be one of {' / '.join(_PRESETS)}, got {preset!r}")
    synth = make_synthfaces(SynthFacesConfig.preset(cast(Preset, preset)))
    model = _load_model(arch, checkpoint, embedding_size, synth.test.image_size, onnx)
    images = [synth.test[i]["image"] for i in range(len(synth.test))]
    emb = np.concatenate(
        [embed_batch(model, torch.stack(images[i : i + 256]), flip=flip).numpy() for i in range(0, len(images), 256)]
    )
    res = evaluate_pairs(emb, synth.pairs, groups=synth.test.groups)
    typer.echo(format_verification(res))
    if out is not None:
        save_json(out / "eval.json", res)
        p = synth.pairs
        scores = np.einsum("ij,ij->i", emb[p.a], emb[p.b])
        plot_roc({arch or str(onnx): (scores, p.issame)}, out / "roc.png")


def _run_arch(checkpoint: Path | None) -> str:
    """The architecture of a run directory (its config.yaml); BadParameter without one."""
    from facekd.evaluate.students import run_config_of

    cfg = run_config_of(checkpoint) if checkpoint is not None else None
    if cfg is None:
        raise typer.BadParameter(
            "give --arch (with --checkpoint), or --onnx: no run directory with a config.yaml names the architecture"
        )
    return cfg.model.arch


def _eval_bins(model, bins: list[Path], step: int, batch_size: int, out: Path | None, source: dict) -> None:
    """insightface's CallBackVerification lines for each .bin set; `out/eval_bin.json` when asked."""
    from facekd.evaluate.model_eval import evaluate_bin
    from facekd.evaluate.verification import format_insightface_line
    from facekd.utils import save_json

    results = []
    for path in bins:
        r = evaluate_bin(model, path, batch_size=batch_size)
        # a single evaluation: the highest accuracy so far is this one
        typer.echo(
            format_insightface_line(
                r["name"], step, r["accuracy_flip"], r["std"], xnorm=r["xnorm"], highest=r["accuracy_flip"]
            )
        )
        results.append(r)
    if out is not None:
        save_json(out / "eval_bin.json", {**source, "step": step, "sets": results})


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def format_verification(res: dict) -> str:
    """A plain-text table of an evaluate_pairs() result."""
    lines = [
        f"pairs: {res['n_genuine']} genuine, {res['n_impostor']} impostor; AUC {res['auc']:.4f}",
        f"{'FAR':>8} {'TAR strict':>11} {'TAR insightface':>16} {'false accepts (expected)':>25}",
    ]
    for s, i in zip(res["tar_at_far"], res["tar_at_far_insightface"]):
        lines.append(f"{s['far']:>8.0e} {s['tar']:>11.4f} {i['tar']:>16.4f} {s['expected_false_accepts']:>25.1f}")
    acc = res["accuracy"]
    lines.append(f"accuracy (10-fold): {acc['mean']:.4f} ± {acc['std']:.4f}")
    return "\n".join(lines)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)
for _command in app.registered_commands:
    _command.callback = with_threads(_command.callback) if _command.callback else None


if __name__ == "__main__":
    app()
