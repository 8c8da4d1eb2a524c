import math

import numpy as np
import pytest
import torch

from facekd.synthfaces import NUISANCES, SynthFacesConfig, make_synthfaces
from facekd.synthfaces.render import allocate_groups, identity_params, identity_sizes, nuisance_params, render_faces


@pytest.fixture(scope="module")
def quick():
    return make_synthfaces(SynthFacesConfig.preset("quick"))


def test_deterministic_from_seed(quick):
    again = make_synthfaces(SynthFacesConfig.preset("quick"))
    assert np.array_equal(quick.train.images, again.train.images)
    assert np.array_equal(quick.test.images, again.test.images)
    assert np.array_equal(quick.pairs.a, again.pairs.a) and np.array_equal(quick.pairs.b, again.pairs.b)
    other = make_synthfaces(SynthFacesConfig.preset("quick", seed=1))
    assert not np.array_equal(quick.test.images, other.test.images)
    assert quick.train.fingerprint() == again.train.fingerprint() != other.train.fingerprint()
    assert quick.train.fingerprint() != quick.test.fingerprint()


def test_item_contract(quick):
    ds = quick.train
    item = ds[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].dtype == torch.int64 and int(item["label"]) == ds.labels[3] and int(item["index"]) == 3
    assert ds.num_classes == 40 and ds.image_size == 32 and ds.labels.dtype == np.int64
    assert set(ds.nuisance) == set(NUISANCES) and all(v.shape == (len(ds),) for v in ds.nuisance.values())
    flipped = ds.with_augmentation({"hflip": True})
    assert flipped.augmentation == {"hflip": True} and type(flipped) is type(ds) and ds.augmentation == {"hflip": False}
    assert flipped.fingerprint() == ds.fingerprint()  # augmentation is not content
    assert flipped.without_augmentation().augmentation == {"hflip": False}


def test_identity_sizes_match_slow_power_law_quantiles():
    lo, hi, alpha, n = 2, 200, 1.4, 50
    sizes = identity_sizes(n, lo, hi, alpha)
    # slow reference: invert the CDF of p(x) ∝ x^-alpha on [lo, hi+1) by bisection, in float64
    grid = np.linspace(lo, hi + 1, 200_001)
    pdf = grid**-alpha
    cdf = np.concatenate([[0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(grid))])
    cdf /= cdf[-1]
    ref = []
    for k in range(n):
        q = (k + 0.5) / n
        a, b = float(lo), float(hi + 1)
        for _ in range(60):
            mid = (a + b) / 2
            a, b = (mid, b) if np.interp(mid, grid, cdf) < q else (a, mid)
        ref.append(int(np.floor(a)))
    assert sizes.tolist() == sorted(ref, reverse=True)
    assert identity_sizes(7, 3, 9, 1.0).tolist() == sorted(
        (np.floor(3 * (10 / 3) ** ((np.arange(7) + 0.5) / 7))).astype(int).tolist(), reverse=True
    )


def test_identity_sizes_long_tail_default():
    cfg = SynthFacesConfig()
    sizes = identity_sizes(cfg.num_train_identities, 2, 200, cfg.size_exponent)
    assert sizes.min() == 2 and sizes.max() >= 150
    assert np.median(sizes) < 0.6 * sizes.mean()  # skewed: a few large identities
    assert 8_000 <= sizes.sum() <= 12_000


def test_train_split_sizes_and_disjoint_test_identities(quick):
    cfg = quick.config
    counts = np.bincount(quick.train.labels)
    assert counts.min() == cfg.min_images_per_identity and counts.max() <= cfg.max_images_per_identity
    assert sorted(counts.tolist()) == sorted(identity_sizes(40, 2, 40, cfg.size_exponent).tolist())
    assert np.bincount(quick.test.labels).tolist() == [cfg.test_images_per_identity] * cfg.num_test_identities
    assert not set(quick.train.identity_ids) & set(quick.test.identity_ids)


def test_groups_per_identity_and_proportions(quick):
    rng = np.random.default_rng(0)
    g = allocate_groups(400, (0.55, 0.25, 0.12, 0.08), rng)
    assert np.bincount(g).tolist() == [220, 100, 48, 32]
    g = allocate_groups(7, (0.5, 0.5), rng)
    assert sorted(np.bincount(g).tolist()) == [3, 4]
    ds = quick.train
    for lab in range(ds.num_classes):  # a group is a property of the identity
        assert len(set(ds.groups[ds.labels == lab])) == 1
    per_id = np.array([ds.groups[ds.labels == lab][0] for lab in range(ds.num_classes)])
    assert np.bincount(per_id, minlength=4).tolist() == [22, 10, 5, 3]


def test_nuisance_bias_easy_images_dominate():
    cfg = SynthFacesConfig()
    nu = nuisance_params(np.random.default_rng(0), 20_000, cfg)
    hard = nu["hard"]
    assert abs(hard.mean() - cfg.hard_fraction) < 0.01
    easy = ~hard
    assert (np.abs(nu["yaw"][easy]) < cfg.hard_yaw).all()
    assert (nu["occlusion"][easy] == 0).all() and (nu["blur"][easy] == 0).all()
    assert (nu["light"][easy] <= 0.15).all() and (nu["expression"][easy] <= 0.15).all()
    strong = (
        (np.abs(nu["yaw"]) >= cfg.hard_yaw)
        | (nu["light"] >= 0.5)
        | (nu["expression"] >= 0.5)
        | (nu["blur"] > 0)
        | (nu["occlusion"] > 0)
    )
    assert np.array_equal(strong, hard)
    assert (np.abs(nu["yaw"]) <= cfg.max_yaw).all()
    large_pose = np.abs(nu["yaw"]) >= cfg.hard_yaw
    assert 0.05 < large_pose.mean() < 0.15  # large poses are rare


def test_pair_protocol(quick):
    cfg, p, ds = quick.config, quick.pairs, quick.test
    assert p.num_genuine == cfg.num_genuine_pairs and p.num_impostor == cfg.num_impostor_pairs
    same = ds.labels[p.a] == ds.labels[p.b]
    assert np.array_equal(same, p.issame)
    assert (p.a < p.b).all()
    codes = p.a * len(ds) + p.b
    assert np.unique(codes).size == len(p)
    assert np.array_equal(p.hard, ds.hard[p.a] | ds.hard[p.b])
    for kind in (p.issame, ~p.issame):
        assert p.hard[kind].sum() == round(cfg.hard_pair_fraction * kind.sum())


def test_default_protocol_resolves_far_1e4():
    cfg = SynthFacesConfig()
    assert cfg.num_impostor_pairs * 1e-4 >= 5 and cfg.num_genuine_pairs >= 3000


def test_too_many_pairs_raise():
    cfg = SynthFacesConfig.preset("quick", num_genuine_pairs=10_000)
    with pytest.raises(ValueError, match="genuine pairs"):
        make_synthfaces(cfg)


def _one_face(**nuis_over):
    cfg = SynthFacesConfig(hard_fraction=0.0)
    ident = identity_params(np.random.default_rng(0), np.array([0]))
    nu = nuisance_params(np.random.default_rng(1), 1, cfg)
    nu.update(
        yaw=np.zeros(1, np.float32),
        roll=np.zeros(1, np.float32),
        shift=np.zeros((1, 2), np.float32),
        scale=np.ones(1, np.float32),
        noise=np.zeros(1, np.float32),
    )
    nu.update({k: np.asarray([v], np.float32) for k, v in nuis_over.items()})
    return render_faces(ident, nu, 48, np.random.default_rng(2))[0].astype(np.float64)


def test_nuisances_change_the_rendering():
    base = _one_face()
    occl = _one_face(occlusion=0.8)
    diff = np.abs(occl - base).mean(axis=(1, 2))
    assert diff[32:].mean() > 10 * max(diff[:12].mean(), 0.1)  # the band covers the lower face only
    blurred = _one_face(blur=1.5)
    grad = lambda im: np.abs(np.diff(im, axis=1)).mean()  # noqa: E731
    assert grad(blurred) < 0.7 * grad(base)
    turned = _one_face(yaw=math.radians(60))
    assert np.abs(turned - base).mean() > 5
    assert np.abs(_one_face(expression=1.0) - base).mean() > 0.5
    assert np.abs(_one_face(light=1.0) - base).mean() > 5


def test_cache_roundtrip_and_mismatch(tmp_path):
    cfg = SynthFacesConfig.preset(
        "quick",
        num_train_identities=6,
        num_test_identities=4,
        test_images_per_identity=4,
        num_genuine_pairs=10,
        num_impostor_pairs=50,
        hard_pair_fraction=None,
        image_size=16,
    )
    a = make_synthfaces(cfg, cache_dir=tmp_path)
    path = tmp_path / f"synthfaces-{cfg.fingerprint()}.npz"
    assert path.exists()
    b = make_synthfaces(cfg, cache_dir=tmp_path)
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.pairs.issame, b.pairs.issame)
    for k in NUISANCES:
        assert np.array_equal(a.test.nuisance[k], b.test.nuisance[k])
    assert a.test.fingerprint() == b.test.fingerprint()
    other = SynthFacesConfig(**{**cfg.model_dump(), "seed": 5})
    path.rename(tmp_path / f"synthfaces-{other.fingerprint()}.npz")
    with pytest.raises(ValueError, match="different config"):
        make_synthfaces(other, cache_dir=tmp_path)


def test_config_validation():
    assert SynthFacesConfig(max_yaw="60deg").max_yaw == pytest.approx(math.radians(60))
    with pytest.raises(ValueError, match="sum to 1"):
        SynthFacesConfig(group_proportions=(0.5, 0.4))
    with pytest.raises(ValueError, match="unknown SynthFaces preset"):
        SynthFacesConfig.preset("huge")
    with pytest.raises(ValueError):
        SynthFacesConfig(max_yaw=2.0)  # radians, must be <= pi/2
    assert SynthFacesConfig().fingerprint() != SynthFacesConfig(image_size=48).fingerprint()
