"""kind synthfaces: the embedded SynthFaces set (`preset`, `synthfaces` overrides, `cache_dir`),
splits train / val / test (disjoint identities; val and test carry verification pairs)."""

from __future__ import annotations

from facekd.data.registry import DataKind, register_kind


def _check(cfg) -> None:
    from facekd.synthfaces import SynthFacesConfig

    SynthFacesConfig.preset(cfg.preset, **cfg.synthfaces)  # unknown or invalid overrides fail here


def _build(cfg, split: str):
    from facekd.synthfaces import SynthFacesConfig, make_synthfaces

    data = make_synthfaces(SynthFacesConfig.preset(cfg.preset, **cfg.synthfaces), cache_dir=cfg.cache_dir)
    return data.split(split)


register_kind(
    DataKind(
        "synthfaces",
        _build,
        splits=("train", "val", "test"),
        options=("preset", "synthfaces", "cache_dir"),
        check=_check,
    )
)
