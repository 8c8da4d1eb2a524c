"""CLI commands of the quantization package: `facekd quantize` and `facekd qat`."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer


def invocation(ctx: typer.Context) -> str:
    """The running `facekd` command with every parameter spelled out (defaults included), in
    declaration order, from the parsed values of `ctx`: the exact command, however it was typed."""
    words = ["facekd", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value == () or value == []:
            continue
        if param.param_type_name == "argument":
            words += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        elif getattr(param, "is_flag", False):
            words += (param.opts if value else param.secondary_opts)[:1]
        else:
            words += [
                w for v in (value if getattr(param, "multiple", False) else [value]) for w in (param.opts[0], str(v))
            ]
    return shlex.join(words)


def eval_sets(
    eval_data: str | None, bins: list[Path] | None, ijb: Path | None, ijb_target: str, flip: bool, default=None
):
    """`EvalSets` from the shared command-line options; `default`: a data block used for the
    SynthFaces pairs when `eval_data` is not given and the block is SynthFaces."""
    from facekd.quant.calibration import data_block
    from facekd.quant.measure import EvalSets

    block = data_block(eval_data) if eval_data else default
    if block is not None and block.get("kind", "synthfaces") != "synthfaces":
        if eval_data:
            raise ValueError(f"--eval-data {eval_data}: test pairs come from SynthFaces blocks; use --bin / --ijb")
        block = None
    return EvalSets(block, tuple(bins or ()), ijb, ijb_target, flip)


def summary(report: dict[str, Any]) -> str:
    """The TAR tables, sizes, latencies and check results of a `compare` report, as text."""
    from facekd.quant.card import tar_tables

    lines = []
    for name, m in report["models"].items():
        lat = m["latency"]
        checks = m["checks"]
        failed = [c["name"] for c in checks["checks"] if c["applies"] and not c["passed"]]
        lines.append(
            f"{name}: {m['path']} {m['size_bytes'] / 1024:.1f} KiB ({m['size_ratio']:.3f}× {report['baseline']}), "
            f"batch 1 {lat['1']['ms']:.3f} ms, batch 32 {lat['32']['ms_per_image']:.4f} ms/image, MFR checks "
            + ("ok" if checks["ok"] else f"FAIL ({'; '.join(failed)})")
        )
    return "\n".join([*lines, "", tar_tables(report)])


def write_export_card(
    model, arch: str, path: Path, source: str, sets, command: str, track: str = "ms1m", repeats: int = 50
) -> Path:
    """card.md next to a freshly exported fp32 ONNX `path` of `model` (loaded from `source`);
    `command`: what produced it; `repeats`: timed runs per batch size."""
    from facekd.evaluate.model_eval import model_image_size
    from facekd.quant.card import CardInfo, training_provenance, write_card
    from facekd.quant.measure import compare

    side = model_image_size(model)
    report = compare({"fp32": path}, "fp32", sets, (side, side), repeats=repeats, track=track)
    provenance = training_provenance(source) if Path(source).exists() else {}
    return write_card(path.parent / "card.md", CardInfo(model, arch, report, "fp32", command, provenance))


def _fp32_source(model: str, arch: str | None, out: Path):
    """(fp32 ONNX path, PyTorch model or None, provenance) for an ONNX file or a checkpoint."""
    from facekd.models.checkpoint import load_backbone
    from facekd.onnx import export_onnx
    from facekd.quant.card import training_provenance

    if model.endswith(".onnx"):
        if not Path(model).is_file():
            raise FileNotFoundError(f"{model}: no such ONNX file")
        return Path(model), None, {}
    if arch is None:
        raise typer.BadParameter("--arch is required when MODEL is a checkpoint (not an .onnx file)")
    torch_model = load_backbone(model, arch)
    path = export_onnx(torch_model, out / "student.onnx")
    typer.echo(f"exported {model} ({arch}) -> {path}")
    return path, torch_model, training_provenance(model)


def quantize_command(
    model: str,
    arch: str | None,
    data: str,
    out: Path,
    settings: dict,
    sets_args: tuple[str | None, list[Path] | None, Path | None, str, bool],
    timing: tuple[int, int],
    track: str,
    command: str,
) -> dict:
    """`facekd quantize`: export (for a checkpoint), calibrate, quantize, compare, write the card;
    returns the report. `settings`: calibrator, calibration_images, per_channel, percentile,
    entropy_bins, seed; `sets_args`: the arguments of `eval_sets` but the default block; `timing`:
    (onnxruntime threads, latency runs); `command`: what produced it, for the card."""
    import onnx

    from facekd.onnx import detect_pixel_norm
    from facekd.quant.calibration import DatasetCalibrationReader, data_block, load_dataset
    from facekd.quant.card import CardInfo, write_card
    from facekd.quant.measure import compare
    from facekd.quant.ptq import quantize_onnx
    from facekd.utils import save_json

    block = data_block(data)
    dataset = load_dataset(block)
    fp32, torch_model, provenance = _fp32_source(model, arch, out)
    proto = onnx.load(str(fp32), load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    size = (dims[2].dim_value, dims[3].dim_value)
    if dataset.image_size != size[0]:
        raise ValueError(f"--data {data}: images of side {dataset.image_size}, {fp32} takes {size[0]}×{size[1]}")
    s = settings
    pixels = detect_pixel_norm(proto.graph)
    reader = DatasetCalibrationReader(dataset, s["calibration_images"], seed=s["seed"], pixel_input=pixels)
    int8 = out / f"{fp32.stem}_int8.onnx"
    quantize_onnx(fp32, int8, reader, s["calibrator"], s["per_channel"], s["percentile"], True, s["entropy_bins"])
    sets = eval_sets(*sets_args, default=block)
    threads, repeats = timing
    report = compare({"fp32": fp32, "int8": int8}, "fp32", sets, size, ("int8",), threads, repeats, track)
    report["quantize"] = {**settings, "data": block}
    save_json(out / "quantize.json", report)
    write_card(out / "card.md", CardInfo(torch_model, arch, report, "int8", command, provenance))
    typer.echo(summary(report) + f"\nwrote {int8}, {out / 'quantize.json'}, {out / 'card.md'}")
    return report


def register(app: typer.Typer) -> None:
    """Add `quantize` and `qat` to the facekd app."""

    @app.command("quantize")
    def quantize_cmd(
        ctx: typer.Context,
        model: str = typer.Argument(..., help="fp32 ONNX file, or a checkpoint (file or run dir) with --arch"),
        data: str = typer.Option(
            ..., help="calibration images: a data-block YAML, a RecordIO / image folder, or '{kind: ...}'"
        ),
        arch: str | None = typer.Option(None, help="architecture of a checkpoint MODEL"),
        out: Path = typer.Option(Path("quantized"), help="output folder (int8 ONNX, quantize.json, card.md)"),
        calibrator: str = typer.Option("minmax", help="minmax | entropy | percentile"),
        calibration_images: int = typer.Option(512, min=1, help="training images the ranges are calibrated on"),
        per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="weight scales per output channel"),
        percentile: float = typer.Option(99.999, help="kept percentile of |x| (calibrator percentile)"),
        entropy_bins: int = typer.Option(512, min=128, help="histogram bins (calibrator entropy; TensorRT: 2048)"),
        eval_data: str | None = typer.Option(None, help="SynthFaces block for the test pairs (default: --data's)"),
        bins: list[Path] | None = typer.Option(None, "--bin", help="insightface .bin set (repeatable)"),
        ijb: Path | None = typer.Option(None, help="IJB release folder (meta/, loose_crop/)"),
        ijb_target: str = typer.Option("IJBC", help="IJBC | IJBB"),
        flip: bool = typer.Option(True, "--flip/--no-flip", help="flip-sum embeddings (insightface protocol)"),
        threads: int = typer.Option(1, min=1, help="onnxruntime threads for evaluation and latency"),
        latency_repeats: int = typer.Option(50, min=1, help="timed runs per model and batch size"),
        track: str = typer.Option("ms1m", help="MFR checker track"),
        seed: int = typer.Option(0, help="seed of the calibration image draw"),
    ) -> None:
        """INT8 static quantization (onnxruntime, QDQ) of a student, compared with its fp32 graph.

        Writes <out>/<name>_int8.onnx, quantize.json (TAR, size, latency, checks of both) and card.md;
        exit 1 when an MFR check that applies to INT8 graphs fails.
        """
        sets_args = (eval_data, bins, ijb, ijb_target, flip)
        settings = {"calibrator": calibrator, "calibration_images": calibration_images, "per_channel": per_channel}
        settings.update(percentile=percentile, entropy_bins=entropy_bins, seed=seed)
        timing = (threads, latency_repeats)
        report = quantize_command(model, arch, data, out, settings, sets_args, timing, track, invocation(ctx))
        if not report["models"]["int8"]["checks"]["ok"]:
            raise typer.Exit(1)

    @app.command("qat")
    def qat_cmd(
        ctx: typer.Context,
        config: Path = typer.Argument(..., help="QAT config YAML (see facekd.quant.qat)"),
        overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. train.lr=0.005"),
        resume: bool = typer.Option(True, "--resume/--restart", help="continue an interrupted run"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Quantization-aware distillation of a trained student, then INT8 export and comparison."""
        from facekd.quant.qat import load_qat_config, run_qat

        cfg = load_qat_config(config, overrides or [])
        report = run_qat(cfg, resume=resume, progress=progress, command=invocation(ctx))
        typer.echo(summary(report) + f"\nwrote {cfg.run_dir / 'deploy'}")
