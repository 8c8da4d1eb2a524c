"""CLI commands of the data-formats area: `facekd pack-rec`, `facekd inspect-rec`, `facekd export-synth`."""

from __future__ import annotations

from pathlib import Path

import typer


def pack_rec(
    source: Path = typer.Argument(
        ..., help="An image folder (root/<identity>/*.jpg) or a list file of 'path label' lines."
    ),
    out_prefix: str = typer.Argument(
        ..., help="Output folder (ending in '/': folder/train.rec, .idx, property) or path stem."
    ),
    root: Path | None = typer.Option(
        None, help="Base folder of the list file's paths (default: the list file's folder)."
    ),
    header: bool = typer.Option(
        True, help="InsightFace layout with header record 0 and identity records (--no-header: im2rec style)."
    ),
    quality: int = typer.Option(95, help="JPEG quality for images that must be re-encoded."),
    image_size: int | None = typer.Option(
        None, help="Square side; images of another size are resized (default: the first image's)."
    ),
) -> None:
    """Pack an image folder or a list file into InsightFace RecordIO (train.rec / train.idx / property)."""
    from facekd.data.folder import EncodedImageDataset, ImageFolderDataset, ListFileDataset
    from facekd.data.recordio import pack_dataset

    resize = image_size is not None
    if source.is_dir():
        ds: EncodedImageDataset = ImageFolderDataset(source, image_size=image_size, resize=resize)
    else:
        ds = ListFileDataset(source, root=root, image_size=image_size, resize=resize)
    out = pack_dataset(ds, out_prefix, with_header=header, quality=quality)
    typer.echo(
        f"wrote {out['num_images']} images of {out['num_classes']} classes "
        f"({out['height']}x{out['width']}) to {out['rec']}, {out['idx']}, {out['property']}"
    )


def inspect_rec(
    prefix: str = typer.Argument(..., help="Dataset folder (train.rec/.idx/property) or path stem."),
    verify: bool = typer.Option(
        False, help="Also decode every image strictly (corrupt JPEG data included) and list the bad ones."
    ),
    preset: str | None = typer.Option(None, help="Compare with a preset: ms1mv2, ms1mv3, glint360k, webface42m."),
    skip_bad: bool = typer.Option(
        False, help="on_error='skip': count malformed records instead of stopping at the first."
    ),
) -> None:
    """Print what a RecordIO training set holds (layout, counts, image size), optionally verified."""
    import numpy as np

    from facekd.data.presets import check_against_header
    from facekd.data.recordio import RecordIODataset

    ds = RecordIODataset(prefix, on_error="skip" if skip_bad else "raise")
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    layout = f"header record 0 = [A={ds.header[0]}, B={ds.header[1]}]" if ds.header else "no header (im2rec / shuffled)"
    typer.echo(
        f"{ds.rec_path}\n  layout: {layout}\n  images: {len(ds)}  classes: {ds.num_classes}  "
        f"image size: {ds.image_size}\n  property: {ds.property}\n"
        f"  images per class: min {counts.min()}  median {int(np.median(counts))}  max {counts.max()}  "
        f"empty classes {int((counts == 0).sum())}\n  skipped records: {len(ds.skipped)}"
    )
    if preset:
        problems = check_against_header(preset, ds)
        typer.echo(f"  preset {preset}: " + ("matches" if not problems else "; ".join(problems)))
    if verify:
        bad = ds.verify()
        typer.echo(
            f"  verify: {len(bad)} undecodable or corrupt image(s) of {len(ds)} (each decoded in full; JPEGs "
            "also by libjpeg-turbo in strict mode. Damage that still forms a valid JPEG stream cannot be detected)"
        )
        for key, off, why in bad[:20]:
            typer.echo(f"    key {key} offset {off}: {why}")
        if bad:
            raise typer.Exit(1)


def export_synth(
    out_dir: Path = typer.Argument(..., help="Output folder: train.rec/.idx/property, <bin-name>.bin, IJBC/."),
    preset: str = typer.Option("quick", help="SynthFaces size preset: quick, default or full."),
    set_: list[str] = typer.Option(
        [], "--set", help="SynthFacesConfig override key=value (repeatable), e.g. --set image_size=32."
    ),
    bin_name: str = typer.Option("synth_val", help="Name of the verification .bin."),
    cache_dir: Path | None = typer.Option(None, help="Reuse / store the rendered SynthFaces arrays here."),
) -> None:
    """Render SynthFaces and write it as RecordIO + a verification .bin + an IJB-C-style release."""
    from facekd.config import ConfigError, apply_overrides
    from facekd.synthfaces import SynthFacesConfig, make_synthfaces
    from facekd.synthfaces.export import export_synthfaces

    try:
        overrides = apply_overrides({}, set_)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--set") from None
    cfg = SynthFacesConfig.preset(preset, **overrides)
    s = export_synthfaces(make_synthfaces(cfg, cache_dir=cache_dir), out_dir, bin_name=bin_name)
    rec = s["recordio"]
    typer.echo(
        f"train: {rec['num_images']} images / {rec['num_classes']} classes -> {rec['rec']}\n"
        f"bin: {s['bin_pairs']} pairs -> {s['bin']}\n"
        f"IJB: {s['ijb_images']} images, {s['ijb_templates']} templates, {s['ijb_genuine_pairs']} genuine / "
        f"{s['ijb_impostor_pairs']} impostor pairs -> {s['ijb_root']}"
    )


def register(app: typer.Typer) -> None:
    """Add `pack-rec`, `inspect-rec` and `export-synth` to the facekd app."""
    app.command("pack-rec")(pack_rec)
    app.command("inspect-rec")(inspect_rec)
    app.command("export-synth")(export_synth)
