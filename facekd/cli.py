"""The `facekd` command: thin wrappers over the library (parse, call, print).

Commands here: demo, train, embed, eval. Other areas add theirs through a module with a
`register(app: typer.Typer) -> None` function listed in `COMMAND_MODULES` (imported at start-up;
an import error surfaces, nothing is skipped silently).

Bad input (ValueError, FileNotFoundError, a config error) prints one line `error: ...` on stderr
and exits with code 2; set FACEKD_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import typer
from pydantic import ValidationError


class _App(typer.Typer):
    """typer.Typer whose bad-input errors are one clean line and exit code 2."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except (ValueError, FileNotFoundError, ValidationError) as e:
            if os.environ.get("FACEKD_DEBUG"):
                raise
            msg = " ".join(str(e).split()) if not isinstance(e, ValidationError) else _one_line(e)
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)


def _one_line(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())


app = _App(
    help="facekd: knowledge distillation for face recognition (data-bias, PAD, ReFO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules of other areas that add commands with `register(app)`; the lead keeps this list.
COMMAND_MODULES: list[str] = [
    "facekd.bias.commands",  # density, uniformity, resample
    "facekd.refo_commands",  # intrinsic-dim, refo
    "facekd.evaluate.commands",  # eval-ijb, eval-reid
    "facekd.onnx.commands",  # export, check-onnx
    "facekd.quant.commands",  # quantize, qat
    "facekd.data.commands",  # pack-rec, inspect-rec, export-synth
]


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="the ≤ 2 minute subset"),
    full: bool = typer.Option(False, "--full", help="every experiment (long; resumable)"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default runs/demo/<tier>)"),
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="number of student seeds (0..N-1)"),
    only: list[str] | None = typer.Option(None, "--only", help="run only these experiments (name or prefix)"),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train teacher and students on SynthFaces, evaluate, and write report.md."""
    from facekd.demo import run_demo, tier_settings

    if quick and full:
        raise typer.BadParameter("--quick and --full exclude each other")
    tier = "quick" if quick else "full" if full else "default"
    settings = tier_settings(tier, list(range(seeds)) if seeds else None)
    if threads:
        settings = settings.model_copy(update={"threads": threads})
    report = run_demo(tier, out=out, only=only, progress=progress, settings=settings)
    typer.echo(report.read_text())


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run config"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. train.lr=0.05"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from run_dir/checkpoints/last.pt"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a model from a YAML config (see docs/training.md)."""
    from facekd.config import load_config, run_training

    cfg = load_config(config, overrides or [])
    run_training(cfg, resume=resume, progress=progress)
    typer.echo(f"done: {cfg.run_dir / 'backbone.pth'}")


def _data_config(data: str, kind: str, split: str):
    from facekd.config import DataConfig

    if kind == "synthfaces":
        return DataConfig(kind="synthfaces", preset=data, split=split)
    return DataConfig(kind=kind, path=Path(data))


def _load_model(arch: str, checkpoint: Path | None, embedding_size: int | None, input_size: int | None):
    """`arch` with the weights of `checkpoint` (sizes not given are inferred from it), else random weights."""
    from facekd.models import get_model
    from facekd.models.checkpoint import load_backbone

    if checkpoint is not None:
        kw = {k: v for k, v in (("embedding_size", embedding_size), ("input_size", input_size)) if v is not None}
        return load_backbone(checkpoint, arch, **kw)
    typer.echo(f"warning: no --checkpoint, {arch} has random weights", err=True)
    return get_model(arch, embedding_size=embedding_size, input_size=input_size).eval()


@app.command()
def embed(
    arch: str = typer.Option(..., "--arch", help="model name (facekd.models.list_models())"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="backbone.pth"),
    data: str = typer.Option("default", "--data", help="SynthFaces preset, or a path for --kind"),
    kind: str = typer.Option("synthfaces", "--kind", help="synthfaces | recordio | folder | list | arrays"),
    split: str = typer.Option("train", "--split", help="SynthFaces split: train | test"),
    out: Path = typer.Option(..., "--out", help="EmbeddingCache directory"),
    flip: bool = typer.Option(False, "--flip", help="flip-sum, as insightface"),
    normalize: bool = typer.Option(True, "--normalize/--raw"),
    embedding_size: int | None = typer.Option(None, "--embedding-size"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Embed a dataset into an EmbeddingCache (resumable; reused when it matches)."""
    from facekd import dist
    from facekd.config import build_dataset
    from facekd.embed import embed_dataset
    from facekd.train import resolve_device

    dist.init_from_env()  # under torchrun each rank embeds its shard and rank 0 assembles the cache
    dataset = build_dataset(_data_config(data, kind, split))
    model = _load_model(arch, checkpoint, embedding_size, dataset.image_size).to(resolve_device("auto"))
    cache = embed_dataset(model, dataset, out, flip=flip, batch_size=batch_size, normalize=normalize, progress=progress)
    if dist.is_main():
        typer.echo(f"{cache.directory}: {cache.embeddings.shape[0]} × {cache.embeddings.shape[1]} float32")


@app.command("eval")
def eval_(
    arch: str = typer.Option(..., "--arch"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="backbone.pth (or a run dir)"),
    bins: list[Path] = typer.Option([], "--bin", help="insightface .bin set(s): `--bin lfw.bin cfp_fp.bin ...`"),
    more_bins: list[Path] | None = typer.Argument(
        None, metavar="BIN", help="further .bin sets after --bin", show_default=False
    ),
    preset: str = typer.Option("default", "--preset", help="SynthFaces preset whose test pairs are used (no --bin)"),
    embedding_size: int | None = typer.Option(None, "--embedding-size"),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="flip-sum test embeddings (no --bin; .bin always flips)"),
    step: int = typer.Option(0, "--step", help="the training step printed in each .bin line"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="with --bin: auto (the local GPU if any) | cpu | cuda:N"),
    out: Path | None = typer.Option(None, "--out", help="also write the result JSON (and roc.png) here"),
) -> None:
    """Verification. With --bin: insightface's Accuracy-Flip on each .bin set, printed in its log
    format (XNorm, Accuracy-Flip, Accuracy-Highest). Without: SynthFaces test pairs, TAR@FAR (both
    conventions) and 10-fold accuracy."""
    if more_bins and not bins:
        raise typer.BadParameter(f"unexpected argument {more_bins[0]}; .bin sets go after --bin")
    if bins:
        _eval_bins(arch, checkpoint, bins + list(more_bins or []), embedding_size, step, batch_size, device, out)
        return
    import numpy as np
    import torch

    from facekd.data.synthetic import SynthFacesConfig, make_synthfaces
    from facekd.embed import embed_batch
    from facekd.evaluate.verification import evaluate_pairs, plot_roc
    from facekd.utils import save_json

    data = make_synthfaces(SynthFacesConfig.preset(preset))
    model = _load_model(arch, checkpoint, embedding_size, data.test.image_size)
    images = [data.test[i]["image"] for i in range(len(data.test))]
    emb = np.concatenate(
        [embed_batch(model, torch.stack(images[i : i + 256]), flip=flip).numpy() for i in range(0, len(images), 256)]
    )
    res = evaluate_pairs(emb, data.pairs, groups=data.test.groups)
    typer.echo(format_verification(res))
    if out is not None:
        save_json(out / "eval.json", res)
        p = data.pairs
        scores = np.einsum("ij,ij->i", emb[p.a], emb[p.b])
        plot_roc({arch: (scores, p.issame)}, out / "roc.png")


def _eval_bins(
    arch: str,
    checkpoint: Path | None,
    bins: list[Path],
    embedding_size: int | None,
    step: int,
    batch_size: int,
    device: str,
    out: Path | None,
) -> None:
    from facekd.evaluate.model_eval import evaluate_bin
    from facekd.evaluate.verification import format_insightface_line
    from facekd.train import resolve_device
    from facekd.utils import save_json

    for path in bins:
        if not path.is_file():
            raise FileNotFoundError(f"verification set {path} does not exist")
    model = _load_model(arch, checkpoint, embedding_size, None).to(resolve_device(device))
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
        save_json(out / "eval_bin.json", {"arch": arch, "checkpoint": str(checkpoint), "step": step, "sets": results})


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


if __name__ == "__main__":
    app()
