"""CLI commands of the ONNX package: `facekd export` and `facekd check-onnx`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `export` and `check-onnx` to the facekd app."""

    @app.command("export")
    def export_cmd(
        ctx: typer.Context,
        model_or_ckpt: str = typer.Argument(
            ..., help="checkpoint (file or run dir); with --random-weights, a model name instead"
        ),
        arch: str | None = typer.Option(None, help="architecture name (required with a checkpoint)"),
        out: Path = typer.Option(Path("student.onnx"), help="output .onnx path"),
        input_size: int | None = typer.Option(None, help="input side in pixels (default: the model's)"),
        pixel_input: bool = typer.Option(False, help="normalise in the graph (input 0-255) instead of outside"),
        check: bool = typer.Option(False, "--check", help="run the MFR checker on the result"),
        track: str = typer.Option("ms1m", help="checker track: ms1m (≤512-d) or glint (≤1024-d)"),
        random_weights: bool = typer.Option(
            False, "--random-weights", help="export the model named MODEL_OR_CKPT with random weights"
        ),
        card: bool = typer.Option(True, "--card/--no-card", help="write card.md next to the ONNX file"),
        eval_data: str | None = typer.Option(None, help="card: SynthFaces data block whose test pairs to score"),
        bins: list[Path] | None = typer.Option(None, "--bin", help="card: insightface .bin set (repeatable)"),
        ijb: Path | None = typer.Option(None, help="card: IJB release folder (meta/, loose_crop/)"),
        ijb_target: str = typer.Option("IJBC", help="card: IJBC | IJBB"),
        latency_repeats: int = typer.Option(20, min=1, help="card: timed runs per batch size"),
    ) -> None:
        """Export a backbone to ONNX (input `data`, dynamic batch, fp32) with its model card
        (card.md: size, FLOPs, latency, TAR on the given pairs, checks, provenance), optionally
        checking it."""
        from facekd.models import get_model, list_models
        from facekd.models.checkpoint import load_backbone
        from facekd.onnx import check_onnx, export_onnx

        if random_weights:
            if model_or_ckpt not in list_models():
                raise ValueError(
                    f"--random-weights: {model_or_ckpt!r} is not a model name ({', '.join(list_models())})"
                )
            typer.echo(f"note: exporting a randomly initialised {model_or_ckpt}", err=True)
            model = get_model(model_or_ckpt, input_size=input_size)
        elif not Path(model_or_ckpt).exists():  # never random weights for a mistyped path
            hint = f" (for random weights of the model {model_or_ckpt}, add --random-weights)"
            raise FileNotFoundError(
                f"checkpoint {model_or_ckpt} does not exist{hint if model_or_ckpt in list_models() else ''}"
            )
        elif arch is None:
            raise typer.BadParameter("--arch is required when exporting a checkpoint")
        else:
            model = (
                load_backbone(model_or_ckpt, arch, input_size=input_size)
                if input_size
                else load_backbone(model_or_ckpt, arch)
            )
        path = export_onnx(model, out, input_size=input_size, pixel_input=pixel_input)
        typer.echo(f"wrote {path}")
        if card:
            from facekd.quant.commands import eval_sets, invocation, write_export_card

            sets = eval_sets(eval_data, bins, ijb, ijb_target, flip=True)
            command, name = invocation(ctx), arch or model_or_ckpt
            card_path = write_export_card(model, name, path, model_or_ckpt, sets, command, track, latency_repeats)
            typer.echo(f"wrote {card_path}")
        if check:
            report = check_onnx(path, track=track, input_size=input_size or getattr(model, "input_size", 112))
            typer.echo(str(report))
            if not report.ok:
                raise typer.Exit(1)

    @app.command("check-onnx")
    def check_cmd(
        path: Path = typer.Argument(..., help="ONNX file, or a directory (last *.onnx, crop.txt, pixel_norm.txt)"),
        track: str = typer.Option("ms1m", help="ms1m / cfat (≤512-d) or glint / unconstrained (≤1024-d)"),
        input_size: int | None = typer.Option(None, help="expected input side (default 112 or crop.txt)"),
        max_time_ms: float | None = typer.Option(None, help="fail above this batch-1 latency on this machine"),
    ) -> None:
        """Run the ICCV21-MFR submission checks and print each one; exit 1 if any fails."""
        from facekd.onnx import check_onnx

        report = check_onnx(path, track=track, input_size=input_size, max_time_ms=max_time_ms)
        typer.echo(str(report))
        if not report.ok:
            raise typer.Exit(1)
