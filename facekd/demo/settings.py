"""What a demo tier depends on: the SynthFaces preset, the networks, their training, the seeds."""

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


class DemoSettings(BaseModel):
    """Everything a demo tier depends on; written to `<run_dir>/config.yaml`.

    data: overrides of `SynthFacesConfig.preset(data_preset)`.
    kd_lambda: reference λ scale other experiments multiply their own factors by (default 1).
    kd_baseline_lambda: λ of the spine's baseline KD (ArcFace + λ·L2 on normalised embeddings). The
        paper gives no value; 20 was the best of {1, 5, 20, 50} on the default tier (seeds 0-1,
        TAR@1e-2/1e-3): ArcFace's s=64 logits give the classification loss a gradient scale that
        λ=1 cannot match.
    eval_flip: flip-sum test embeddings (insightface's protocol) when evaluating.
    threads: torch CPU threads (default 1: on a 2-core machine a second intra-op thread gains little
        for these small nets, and when anything else uses a core it makes training up to 100× slower
        (measured 752 vs 8 img/s for mbf_tiny); None: torch's default). `facekd demo --threads N`.
        It does not change results, so stored results are reused across thread counts.
    """

    model_config = ConfigDict(extra="forbid")
    tier: Tier
    seeds: list[int]
    data_preset: Tier
    data: dict[str, Any] = Field(default_factory=dict)
    teacher: NetSettings
    student: NetSettings
    kd_lambda: float = 1.0
    kd_baseline_lambda: float = 20.0
    eval_flip: bool = True
    threads: int | None = 1

    def results_key(self) -> dict:
        """The settings that define results (all but `threads`), as plain data."""
        return self.model_dump(mode="json", exclude={"threads"})


def tier_settings(tier: str, seeds: Sequence[int] | None = None) -> DemoSettings:
    """The demo's settings for `tier` (times measured on 2 CPU cores, see docs/training.md)."""
    presets: dict[str, dict] = {
        "quick": dict(
            seeds=[0],
            data_preset="quick",
            data={},
            teacher=dict(arch="iresnet_tiny", epochs=16, batch_size=32, lr=0.1),
            student=dict(arch="mbf_tiny", epochs=10, batch_size=32, lr=0.1),
        ),
        "default": dict(
            seeds=[0, 1],
            data_preset="default",
            data=dict(num_train_identities=200),
            teacher=dict(arch="iresnet_tiny", epochs=8, batch_size=64, lr=0.1),
            student=dict(arch="mbf_tiny", epochs=5, batch_size=64, lr=0.1),
        ),
        # Every experiment, three seeds, on the default tier's data and networks: a full run in the
        # default run directory (`--out runs/demo/default`) reuses the default demo's teacher and
        # students instead of training them again.
        "full": dict(
            seeds=[0, 1, 2],
            data_preset="default",
            data=dict(num_train_identities=200),
            teacher=dict(arch="iresnet_tiny", epochs=8, batch_size=64, lr=0.1),
            student=dict(arch="mbf_tiny", epochs=5, batch_size=64, lr=0.1),
        ),
    }
    if tier not in presets:
        raise ValueError(f"unknown demo tier {tier!r}; expected one of {TIERS}")
    s = presets[tier]
    if seeds is not None:
        s = {**s, "seeds": list(seeds)}
    return DemoSettings.model_validate({"tier": tier, **s})


__all__ = ["TIERS", "DemoSettings", "NetSettings", "Tier", "tier_settings"]
