"""SynthFaces: procedurally rendered face-like RGB images, biased the way MS1MV3 is.

"Rectifying the Data Bias in Knowledge Distillation" (Liu et al., §1 and §3.1) describes
MS1MV3: identity sizes range from 2 to more than 200 images, and "clear front face images dominate
the dataset while images with large pose are rare". SynthFaces reproduces both biases, small enough to
train on two CPU cores:

* identities: a parameter vector each (face ellipse and chin taper, skin tone from a demographic
  group, hair colour / hairline / length, eye spacing, size and iris colour, brows, nose, mouth,
  beard, marks); identity sizes follow a truncated power law (Zipf-like) between
  `min_images_per_identity` and `max_images_per_identity`;
* groups: four skin-tone groups in unequal proportions (default 0.55 / 0.25 / 0.12 / 0.08),
  stored per image (`dataset.groups`);
* nuisances per image: yaw (head rotation on a cylinder model: features shift and foreshorten,
  one side shaded), illumination (directional gradient and global gain), expression (mouth opens
  and curves, eyes squint, brows rise), Gaussian blur, occlusion (a mask band over the lower
  face), plus small alignment jitter, random background and pixel noise. A fraction
  `hard_fraction` (default 0.2) of images is "hard": at least one of the five factors is strong;
  the rest are near-frontal and clean;
* a train split and a disjoint set of test identities, with a verification protocol of genuine
  and impostor pairs (`VerificationPairs`), a stated fraction of which involve a hard image.

Everything is deterministic from `SynthFacesConfig.seed`. Rendering is vectorised numpy
(10k images of 32×32 in a few seconds on one core).

Modules: `config` (SynthFacesConfig), `render` (identity and nuisance parameters, the renderer),
`pairs` (the verification protocol), `dataset` (the splits, `make_synthfaces`, the cache),
`export` (SynthFaces written out as RecordIO + `.bin` + an IJB-C-style release).
"""

from facekd.synthfaces.config import NUISANCES, SynthFacesConfig
from facekd.synthfaces.dataset import SynthFacesData, SynthFacesDataset, make_synthfaces
from facekd.synthfaces.pairs import VerificationPairs, make_pairs

__all__ = [
    "NUISANCES",
    "SynthFacesConfig",
    "SynthFacesData",
    "SynthFacesDataset",
    "VerificationPairs",
    "make_pairs",
    "make_synthfaces",
]
