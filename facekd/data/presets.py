"""Known InsightFace training sets (class and image counts of arcface_torch's `configs/*.py`),
checked against a RecordIO dataset's own header when both are at hand."""

from __future__ import annotations

import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetPreset:
    """A training set as arcface_torch configures it: `num_classes`, `num_images`, usual folder name."""

    name: str
    folder: str
    num_classes: int
    num_images: int


PRESETS: dict[str, DatasetPreset] = {
    p.name: p
    for p in (
        DatasetPreset("ms1mv2", "faces_emore", 85_742, 5_822_653),
        DatasetPreset("ms1mv3", "ms1m-retinaface-t1", 93_431, 5_179_510),
        DatasetPreset("glint360k", "glint360k", 360_232, 17_091_657),
        DatasetPreset("webface42m", "WebFace42M", 2_059_906, 42_474_557),
    )
}


def get_preset(name: str) -> DatasetPreset:
    """Preset by name, case-insensitive ("MS1MV3", "ms1mv3"), or by its folder name ("faces_emore")."""
    key = name.lower()
    for p in PRESETS.values():
        if key in (p.name, p.folder.lower()):
            return p
    raise ValueError(
        f"unknown dataset preset {name!r}; known: {', '.join(PRESETS)} (folders: "
        f"{', '.join(p.folder for p in PRESETS.values())})"
    )


def check_against_header(preset: DatasetPreset | str, dataset, strict: bool = False) -> list[str]:
    """Compare a preset with a dataset's `num_classes` and `len()` (e.g. a RecordIODataset).

    Returns the list of mismatch messages (empty when both agree). A mismatch warns, or raises
    ValueError with strict=True — e.g. a truncated download or the wrong folder for the config.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    where = getattr(dataset, "rec_path", type(dataset).__name__)
    problems = []
    if dataset.num_classes != p.num_classes:
        problems.append(f"{where}: {dataset.num_classes} classes, preset {p.name} expects {p.num_classes}")
    skipped = len(getattr(dataset, "skipped", ()))
    if len(dataset) + skipped != p.num_images:
        problems.append(f"{where}: {len(dataset) + skipped} images, preset {p.name} expects {p.num_images}")
    if problems and strict:
        raise ValueError("; ".join(problems))
    for msg in problems:
        warnings.warn(msg, stacklevel=2)
    return problems
