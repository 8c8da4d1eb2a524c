"""The sizes, cameras and difficulty of SynthPersons (`SynthPersonsConfig`), and its fingerprint."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_PID = 1501  # Market-1501's person ids run 1..1501 (its readers refuse larger ones)


class SynthPersonsConfig(BaseModel):
    """Sizes and difficulty of SynthPersons. `SynthPersonsConfig.preset(name)` gives the "quick" /
    "default" / "full" sizes; any field can be overridden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    height: int = Field(128, ge=32, le=512, description="image height in pixels (width = height / 2)")
    num_train_identities: int = Field(250, ge=2)
    num_test_identities: int = Field(250, ge=2)
    num_cameras: int = Field(6, ge=2, le=6, description="Market-1501 has 6 cameras")
    min_cameras: int = Field(2, ge=2, description="cameras that see each person, at least")
    max_cameras: int = Field(6, ge=2)
    max_images_per_camera: int = Field(4, ge=1, description="tracklet length: 1..this images per camera")
    distractor_fraction: float = Field(
        0.1, ge=0, lt=1, description="gallery images of pid 0000 (false detections), as a share of the gallery"
    )
    junk_fraction: float = Field(0.05, ge=0, lt=1, description="gallery images of pid -1 (bad boxes), share")
    view_noise_deg: float = Field(20.0, ge=0, description="std of a person's heading around the camera's path")
    occlusion_rate: float = Field(0.1, ge=0, le=1, description="images with a foreground object over the legs")

    @property
    def width(self) -> int:
        return self.height // 2

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W), 2:1 like Market-1501's crops."""
        return self.height, self.width

    @model_validator(mode="after")
    def _check(self):
        if self.max_cameras < self.min_cameras:
            raise ValueError("max_cameras must be >= min_cameras")
        if self.min_cameras > self.num_cameras:
            raise ValueError(f"min_cameras {self.min_cameras} > num_cameras {self.num_cameras}")
        if self.num_train_identities + self.num_test_identities > MAX_PID:
            raise ValueError(
                f"train + test identities must be <= {MAX_PID} (Market-1501 person ids), "
                f"got {self.num_train_identities + self.num_test_identities}"
            )
        return self

    @classmethod
    def preset(cls, name: str, **overrides) -> SynthPersonsConfig:
        """quick: 64×32, 60 + 60 identities (tests, smoke runs); default: 128×64, 250 + 250
        identities (~5.5k images); full: 128×64, 751 + 750 identities as Market-1501 (~17k images)."""
        presets: dict[str, dict] = {
            "quick": dict(height=64, num_train_identities=60, num_test_identities=60),
            "default": {},
            "full": dict(num_train_identities=751, num_test_identities=750),
        }
        if name not in presets:
            raise ValueError(f"unknown SynthPersons preset {name!r}; expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def fingerprint(self) -> str:
        """16-hex-digit hash of every field (and the renderer version)."""
        payload = json.dumps({"v": _RENDER_VERSION, **self.model_dump()}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


_RENDER_VERSION = 1
