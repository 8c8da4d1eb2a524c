"""`facekd export-synth-persons OUT`: render SynthPersons and write it as a Market-1501 release."""

from __future__ import annotations

from pathlib import Path

import typer


def export_synth_persons(
    out_dir: Path = typer.Argument(..., help="Output folder: bounding_box_train/, query/, bounding_box_test/."),
    preset: str = typer.Option("default", help="SynthPersons size preset: quick, default or full."),
    set_: list[str] = typer.Option(
        [], "--set", help="SynthPersonsConfig override key=value (repeatable), e.g. --set height=64."
    ),
    cache_dir: Path | None = typer.Option(None, help="Reuse / store the rendered SynthPersons arrays here."),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG quality."),
) -> None:
    """Render SynthPersons (synthetic person re-ID: clothing and body identities, six cameras) and
    write it as Market-1501 (read it with `data: {kind: market1501, path: OUT}`)."""
    from pydantic import ValidationError

    from facekd.config import ConfigError, apply_overrides, format_validation_error
    from facekd.synthpersons import SynthPersonsConfig, make_synthpersons
    from facekd.synthpersons.export import export_synthpersons

    try:
        cfg = SynthPersonsConfig.preset(preset, **apply_overrides({}, set_))
    except ValidationError as e:
        raise typer.BadParameter(format_validation_error(e, "SynthPersonsConfig"), param_hint="--set") from None
    except (ConfigError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--preset / --set") from None
    try:
        s = export_synthpersons(make_synthpersons(cfg, cache_dir=cache_dir), out_dir, quality=quality)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"train: {s['train_images']} images / {s['train_identities']} people; query: {s['query_images']}; "
        f"gallery: {s['gallery_images']} ({s['gallery_distractors']} distractors, {s['gallery_junk']} junk) "
        f"-> {s['root']}"
    )


def register(app: typer.Typer) -> None:
    """Add `export-synth-persons` to the facekd app."""
    app.command("export-synth-persons")(export_synth_persons)
