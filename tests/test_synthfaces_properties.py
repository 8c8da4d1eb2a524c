"""What a network trained from scratch on SynthFaces learns (render version 2), measured with
`facekd.synthfaces.probe` on the demo's training data (default preset, 200 train identities) and an
RFW-style balanced test split (100 identities × 10 images per group): identity falls with nuisance
severity, and rarer groups are verified less well. docs/data.md gives the numbers. The shared
fixture trains the probe once (about 100 s of one core): the group order needs this budget, weaker
probes do not show it (docs/data.md, "How robust the group order is")."""

import itertools

import numpy as np
import pytest
import torch

from facekd.synthfaces import SynthFacesConfig, make_synthfaces
from facekd.synthfaces.probe import embed, tar_by_group, tar_by_severity, train_probe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probe():
    torch.set_num_threads(1)
    cfg = SynthFacesConfig.preset(
        "default",
        num_train_identities=200,
        num_test_identities=400,
        test_images_per_identity=10,
        eval_group_proportions=(0.25, 0.25, 0.25, 0.25),
        num_genuine_pairs=3000,
        num_impostor_pairs=50_000,
        num_val_identities=2,
        num_val_genuine_pairs=2,
        num_val_impostor_pairs=10,
    )
    data = make_synthfaces(cfg)
    model = train_probe(data.train, steps=600, seed=0)
    return data, embed(model, data.test.images)


def test_identity_information_falls_with_nuisance_severity(probe):
    data, emb = probe
    rows = tar_by_severity(emb, data.test, data.pairs, far=1e-2)
    print([(r["severity"], r["n_genuine"], round(r["tar"], 3), round(r["mean_genuine_cos"], 3)) for r in rows])
    tar = [r["tar"] for r in rows]
    cos = [r["mean_genuine_cos"] for r in rows]
    assert all(r["n_genuine"] >= 100 for r in rows)
    assert tar[0] > 0.4 and all(a > b for a, b in itertools.pairwise(tar))
    assert all(a > b for a, b in itertools.pairwise(cos))
    assert tar[-1] <= 0.05  # the most severe pairs are accepted about as often as impostors (FAR 0.01)


def test_rarer_groups_are_verified_less_well(probe):
    data, emb = probe
    res = tar_by_group(emb, data.test, far=1e-2, n_boot=2000)
    print({g: (round(r["tar"], 3), [round(v, 3) for v in r["ci95"]]) for g, r in res.items()})
    tar = [res[g]["tar"] for g in range(4)]  # groups 0..3 are 55 / 25 / 12 / 8 % of the training identities
    assert tar[0] > tar[2] > tar[3] and tar[1] > tar[3]
    # the ordering is not noise: majority minus rarest, and the two frequent minus the two rare groups
    diff = res[0]["boot"] - res[3]["boot"]
    assert np.quantile(diff, 0.025) > 0
    halves = (res[0]["boot"] + res[1]["boot"]) / 2 - (res[2]["boot"] + res[3]["boot"]) / 2
    assert np.quantile(halves, 0.025) > 0
