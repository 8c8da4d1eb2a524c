"""SynthFaces: procedurally rendered face-like RGB images with the biases of real face data.

"Rectifying the Data Bias in Knowledge Distillation" (Liu et al., §1 and §3.1) describes MS1MV3:
identity sizes range from 2 to more than 200 images, and "clear front face images dominate the
dataset while images with large pose are rare". SynthFaces reproduces these and three more
properties of real face training data, small enough to train on two CPU cores:

* identities: a face-parameter vector each; identity sizes follow a truncated power law between
  `min_images_per_identity` and `max_images_per_identity`;
* groups: four skin-tone groups in unequal proportions (default 0.55 / 0.25 / 0.12 / 0.08), each
  with its own discriminative features (`identities.GROUP_FEATURES`), so a rare group's features
  are learned less (as "Racial Faces in-the-Wild" reports for real data);
* nuisances per image: yaw, illumination, expression, blur, occlusion, plus alignment jitter,
  background and pixel noise; a fraction `hard_fraction` (0.2) of images is "hard";
* identity information that falls with the nuisances' severity: the most severe images are
  rendered mostly from a random face and are nearly unidentifiable (PAD's low-quality samples);
* label noise: `label_noise` (5 %) of the train rows show someone else, recorded per row;
* train, val and test splits with disjoint identities; val and test carry verification pairs.

Everything is deterministic from `SynthFacesConfig.seed`; rendering is vectorised numpy.

Modules: `config` (SynthFacesConfig), `identities` (sizes, groups, face parameters, label noise),
`render` (nuisances, severity, the renderer), `pairs` (the verification protocol), `dataset` (the
splits, `make_synthfaces`, the cache), `export` (RecordIO + `.bin` + an IJB-C-style release),
`probe` (what a network trained from scratch learns from it).
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
