"""The sizes, biases and difficulty of SynthFaces (`SynthFacesConfig`), and its fingerprint."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from facekd.synthfaces.identities import NUM_SKIN_TONES
from facekd.utils import parse_angle

NUISANCES = ("yaw", "light", "expression", "blur", "occlusion")


class SynthFacesConfig(BaseModel):
    """Sizes, biases and difficulty of SynthFaces. `SynthFacesConfig.preset(name)` gives the
    "quick" / "default" / "full" sizes; any field can be overridden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    image_size: int = Field(32, ge=16, le=112, description="square side in pixels")
    num_train_identities: int = Field(400, ge=2)
    num_test_identities: int = Field(150, ge=2)
    min_images_per_identity: int = Field(2, ge=2)
    max_images_per_identity: int = Field(200, ge=2)
    size_exponent: float = Field(1.4, gt=0, description="train identity size n has density ∝ n^-size_exponent")
    test_images_per_identity: int = Field(20, ge=2)
    group_proportions: tuple[float, ...] = (0.55, 0.25, 0.12, 0.08)
    hard_fraction: float = Field(0.2, ge=0, le=1, description="fraction of images with a strong nuisance")
    max_yaw: float = Field(math.radians(75), gt=0, le=math.pi / 2, description="radians; accepts '75deg'")
    hard_yaw: float = Field(math.radians(25), gt=0, description="radians; |yaw| of a hard pose is ≥ this")
    nuisance_strength: float = Field(1.0, ge=0, description="scales every strong nuisance's magnitude")
    noise_std: float = Field(0.025, ge=0, description="pixel noise std, fraction of the 0..255 range")
    num_genuine_pairs: int = Field(5000, ge=1)
    num_impostor_pairs: int = Field(100_000, ge=1)
    hard_pair_fraction: float | None = Field(
        0.3, ge=0, le=1, description="fraction of each pair kind involving a hard image; None: as drawn"
    )
    num_val_identities: int | None = Field(None, ge=2, description="val split identities; None: num_test_identities")
    num_val_genuine_pairs: int | None = Field(None, ge=1, description="None: num_genuine_pairs")
    num_val_impostor_pairs: int | None = Field(None, ge=1, description="None: num_impostor_pairs")
    eval_group_proportions: tuple[float, ...] | None = Field(
        None, description="group proportions of the val and test identities; None: group_proportions"
    )
    group_feature_spread: float = Field(
        0.2, ge=0, le=1, description="range of another group's specific features within a group; 1: all shared"
    )
    identity_loss: float = Field(
        1.0, ge=0, le=1, description="share of an image's face taken from a random face at severity 1"
    )
    label_noise: float = Field(0.05, ge=0, lt=0.5, description="fraction of train rows with a wrong label")
    label_noise_outliers: float = Field(
        0.5, ge=0, le=1, description="share of the wrong-label rows showing a person outside the dataset"
    )

    @field_validator("max_yaw", "hard_yaw", mode="before")
    @classmethod
    def _angle(cls, v):
        return parse_angle(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self):
        if self.max_images_per_identity < self.min_images_per_identity:
            raise ValueError("max_images_per_identity must be >= min_images_per_identity")
        _check_proportions("group_proportions", self.group_proportions)
        if self.eval_group_proportions is not None:
            _check_proportions("eval_group_proportions", self.eval_group_proportions)
            if len(self.eval_group_proportions) != len(self.group_proportions):
                raise ValueError("eval_group_proportions must have one entry per group of group_proportions")
        if self.hard_yaw >= self.max_yaw:
            raise ValueError("hard_yaw must be < max_yaw")
        return self

    @classmethod
    def preset(cls, name: str, **overrides) -> SynthFacesConfig:
        """quick: 371 train images of 40 identities, renders in < 1 s (tests, smoke runs);
        default: 32 px, ~9.2k train images of 400 identities, 150 test identities × 20 images,
        5k genuine / 100k impostor pairs; full: 48 px, ~35k train images of 1500 identities,
        400 test identities, 20k genuine / 1M impostor pairs."""
        presets = {
            "quick": dict(
                num_train_identities=40,
                num_test_identities=16,
                max_images_per_identity=40,
                test_images_per_identity=8,
                num_genuine_pairs=200,
                num_impostor_pairs=4000,
            ),
            "default": {},
            "full": dict(
                image_size=48,
                num_train_identities=1500,
                num_test_identities=400,
                num_genuine_pairs=20_000,
                num_impostor_pairs=1_000_000,
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown SynthFaces preset {name!r}; expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def eval_protocol(self, split: str) -> tuple[int, int, int]:
        """(identities, genuine pairs, impostor pairs) of the "val" or "test" split."""
        if split == "test":
            return self.num_test_identities, self.num_genuine_pairs, self.num_impostor_pairs
        if split != "val":
            raise ValueError(f"evaluation splits are val and test, not {split!r}")
        return (
            self.num_val_identities or self.num_test_identities,
            self.num_val_genuine_pairs or self.num_genuine_pairs,
            self.num_val_impostor_pairs or self.num_impostor_pairs,
        )

    def fingerprint(self) -> str:
        """16-hex-digit hash of every field (and the renderer version)."""
        payload = json.dumps({"v": _RENDER_VERSION, **self.model_dump()}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _check_proportions(name: str, proportions: tuple[float, ...]) -> None:
    p = np.asarray(proportions, float)
    if p.size < 1 or (p <= 0).any() or abs(p.sum() - 1) > 1e-6:
        raise ValueError(f"{name} must be positive and sum to 1, got {proportions}")
    if p.size > NUM_SKIN_TONES:
        raise ValueError(f"at most {NUM_SKIN_TONES} groups (skin tones) are defined, got {p.size}")


# 2: group-specific features, identity information lost with nuisance severity, label noise, val split
_RENDER_VERSION = 2
