"""What a demo tier depends on: the SynthFaces preset, the networks, their training, the seeds, and
the hyper-parameter grids searched on the validation split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Tier = Literal["quick", "default", "full"]
TIERS: tuple[str, ...] = ("quick", "default", "full")


class NetSettings(BaseModel):
    """A network and how long / how it is trained in the demo (hflip: flip augmentation of its data)."""

    model_config = ConfigDict(extra="forbid")
    arch: str
    embedding_size: int = 128
    epochs: int = Field(ge=1)
    batch_size: int = 64
    lr: float = 0.1
    warmup_epochs: float = 0.5
    hflip: bool = False


class GridSettings(BaseModel):
    """Hyper-parameter grids, each searched on the SynthFaces validation split (identities disjoint
    from train and test) by `facekd.demo.selection`: one student per value and selection seed,
    scored by validation TAR@FAR=1e-3 (mean over the selection seeds), the best value kept (ties:
    the first listed). Test pairs never take part.

    kd_lambda: λ of the data-bias paper's KD baseline (ArcFace + λ·L2 on normalised embeddings),
        shared by KD + ES / IS and ReFO+'s proxy. pad_lambda: λ of PAD-L2; None (default): KD's
        chosen λ, so that PAD differs from the KD baseline in its weighting only (as in the PAD
        paper, which adds the variance branch to a given distillation). is_bandwidth_deg: the
        Intrinsic Sampling bandwidth h (the paper's 12° is in the grid, not assumed).
    Full tier: soft_exp_T / soft_poly_alpha / hard_mining_T (PAD's Tables 1, 6, 7), hkd_T (HKD's T).
    """

    model_config = ConfigDict(extra="forbid")
    seeds: list[int] = Field(default_factory=lambda: [0])
    kd_lambda: list[float] = Field(default_factory=lambda: [20.0, 50.0])
    pad_lambda: list[float] | None = None
    is_bandwidth_deg: list[float] = Field(default_factory=lambda: [6.0, 12.0, 24.0])
    soft_exp_T: list[float] = Field(default_factory=lambda: [0.1, 0.5, 2.0])
    soft_poly_alpha: list[float] = Field(default_factory=lambda: [1.0, 5.0, 20.0])
    hard_mining_T: list[float] = Field(default_factory=lambda: [0.5, 2.0])
    hkd_T: list[float] = Field(default_factory=lambda: [2.0, 4.0, 8.0])


class DemoSettings(BaseModel):
    """Everything a demo tier depends on; written to `<run_dir>/config.yaml`.

    seeds: student seeds of every main table (paired across methods: seed s of each method starts
        from the same initialisation and sees the same batches where the method allows).
    teacher_seeds: teachers trained (the first one teaches every student; the others give the
        teacher's seed spread reported next to "beats the teacher" comparisons).
    data: overrides of `SynthFacesConfig.preset(data_preset)`.
    grid: the validation-split grids (`GridSettings`).
    eval_flip: flip-sum test embeddings (insightface's protocol) when evaluating.
    threads: torch CPU threads per training process (default 1: on a 2-core machine a second
        intra-op thread gains little for these small nets, and when anything else uses a core it
        makes training up to 100× slower (measured 752 vs 8 img/s for mbf_tiny); None: torch's
        default). `facekd demo --threads N`.
    workers: training processes run side by side for independent runs (default 2, one per core of
        a 2-core machine; 1 = in this process). `facekd demo --workers N`.
    threads and workers do not change results, so stored results are reused across them.
    """

    model_config = ConfigDict(extra="forbid")
    tier: Tier
    seeds: list[int]
    teacher_seeds: list[int] = Field(default_factory=lambda: [0])
    data_preset: Tier
    data: dict[str, Any] = Field(default_factory=dict)
    teacher: NetSettings
    student: NetSettings
    grid: GridSettings = Field(default_factory=GridSettings)
    eval_flip: bool = True
    threads: int | None = 1
    workers: int = Field(2, ge=1)

    def results_key(self) -> dict:
        """The settings that define results (all but `threads` and `workers`), as plain data."""
        return self.model_dump(mode="json", exclude={"threads", "workers"})


def tier_settings(tier: str, seeds: Sequence[int] | None = None) -> DemoSettings:
    """The demo's settings for `tier` (wall times: docs/training.md and README)."""
    nets = dict(
        teacher=dict(arch="iresnet_tiny", epochs=8, batch_size=64, lr=0.1),
        student=dict(arch="mbf_tiny", epochs=5, batch_size=64, lr=0.1),
    )
    presets: dict[str, dict] = {
        "quick": dict(
            seeds=[0],
            data_preset="quick",
            data={},
            teacher=dict(arch="iresnet_tiny", epochs=16, batch_size=32, lr=0.1),
            student=dict(arch="mbf_tiny", epochs=10, batch_size=32, lr=0.1),
            grid=dict(kd_lambda=[20.0], is_bandwidth_deg=[12.0]),
        ),
        "default": dict(seeds=[0, 1, 2], data_preset="default", data=dict(num_train_identities=200), **nets),
        # Every experiment on the default tier's data and networks, with three teacher seeds: a full
        # run in the default run directory (`--out runs/demo/default`) reuses the default demo's
        # runs instead of training them again.
        "full": dict(
            seeds=[0, 1, 2],
            teacher_seeds=[0, 1, 2],
            data_preset="default",
            data=dict(num_train_identities=200),
            **nets,
        ),
    }
    if tier not in presets:
        raise ValueError(f"unknown demo tier {tier!r}; expected one of {TIERS}")
    s = presets[tier]
    if seeds is not None:
        s = {**s, "seeds": list(seeds)}
    return DemoSettings.model_validate({"tier": tier, **s})


__all__ = ["TIERS", "DemoSettings", "GridSettings", "NetSettings", "Tier", "tier_settings"]
