"""kind synthpersons: the embedded synthetic person re-ID set (`preset`, `synthpersons` overrides of
SynthPersonsConfig, `cache_dir`), splits train / query / gallery, rendered in memory with the item
contract of the market1501 kind (ImageNet normalisation, `camid`)."""

from __future__ import annotations

from facekd.data.registry import DataKind, register_kind


def _check(cfg) -> None:
    from facekd.synthpersons import SynthPersonsConfig

    SynthPersonsConfig.preset(cfg.preset, **cfg.synthpersons)  # unknown or invalid overrides fail here


def _build(cfg, split: str):
    from facekd.synthpersons import SynthPersonsConfig, make_synthpersons

    data = make_synthpersons(SynthPersonsConfig.preset(cfg.preset, **cfg.synthpersons), cache_dir=cfg.cache_dir)
    return data.split(split)


register_kind(
    DataKind(
        "synthpersons",
        _build,
        splits=("train", "query", "gallery"),
        options=("preset", "synthpersons", "cache_dir"),
        check=_check,
    )
)
