import math

import numpy as np
import pytest
import torch

from facekd.synthfaces import NUISANCES, SynthFacesConfig, make_synthfaces
from facekd.synthfaces.identities import allocate_groups, identity_params, identity_sizes
from facekd.synthfaces.render import nuisance_params, render_faces


@pytest.fixture(scope="module")
def quick():
    return make_synthfaces(SynthFacesConfig.preset("quick"))


@pytest.mark.slow
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
    assert np.bincount(quick.val.labels).tolist() == [cfg.test_images_per_identity] * cfg.num_test_identities
    ids = [set(ds.identity_ids) for ds in (quick.train, quick.val, quick.test)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert quick.val.fingerprint() not in (quick.train.fingerprint(), quick.test.fingerprint())


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


@pytest.mark.parametrize("split", ["test", "val"])
def test_pair_protocol(quick, split):
    cfg, p, ds = quick.config, quick.pairs_of(split), quick.split(split)
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
    for key in ("severity", "identity_info", "noisy", "true_identity_ids"):
        assert np.array_equal(getattr(a.train, key), getattr(b.train, key))
    assert np.array_equal(a.val.images, b.val.images) and np.array_equal(a.val_pairs.a, b.val_pairs.a)
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


# ---------------------------------------------------------------------------------------------
# the biases of real face data: group-specific features, identity lost to nuisances, label noise


def test_group_specific_features_vary_only_in_their_group():
    from facekd.synthfaces.identities import GROUP_FEATURES, SHARED_FEATURES, group_prototypes

    groups = np.repeat(np.arange(4), 3000)
    full = identity_params(np.random.default_rng(0), groups, minor_spread=1.0)
    spread = identity_params(np.random.default_rng(0), groups, minor_spread=0.2)
    proto = group_prototypes()
    owned = [k for feats in GROUP_FEATURES for k in feats]
    assert len(owned) == len(set(owned)) and not set(owned) & set(SHARED_FEATURES)
    assert set(owned) | set(SHARED_FEATURES) | {"skin"} == set(full)
    for owner, feats in enumerate(GROUP_FEATURES):
        for key in feats:
            for g in range(4):
                rows = groups == g
                sd_full = full[key][rows].std(0).mean()
                sd = spread[key][rows].std(0).mean()
                if g == owner:
                    assert np.array_equal(spread[key][rows], full[key][rows])
                else:  # the same draw pulled to the group's typical face: 0.2 of the spread
                    assert sd == pytest.approx(0.2 * sd_full, rel=1e-4, abs=1e-7)
                    assert np.allclose(spread[key][rows], proto[key][g] + 0.2 * (full[key][rows] - proto[key][g]))
    for key in SHARED_FEATURES:
        assert np.array_equal(spread[key], full[key])


def test_severity_is_zero_for_easy_images_and_grows_with_each_factor():
    from facekd.synthfaces.render import SEVERITY_WEIGHTS, identity_info, nuisance_severity

    cfg = SynthFacesConfig()
    nu = nuisance_params(np.random.default_rng(0), 20_000, cfg)
    sev = nuisance_severity(nu, cfg)
    assert (sev[~nu["hard"]] == 0).all() and (sev[nu["hard"]] >= 0).all() and sev.max() <= 1
    base = {k: np.zeros(6, np.float32) for k in NUISANCES}
    extremes = {
        "yaw": np.linspace(cfg.hard_yaw, cfg.max_yaw, 6),
        "light": np.linspace(0.5, 1, 6),
        "expression": np.linspace(0.5, 1, 6),
        "blur": np.linspace(0.7, 1.6, 6),
        "occlusion": np.linspace(0.4, 1, 6),
    }
    for c, (key, values) in zip(SEVERITY_WEIGHTS, extremes.items()):
        s = nuisance_severity({**base, key: values.astype(np.float32)}, cfg)
        assert s[0] == pytest.approx(0, abs=1e-6) and s[-1] == pytest.approx(c, abs=1e-6)
        assert (np.diff(s) > 0).all()
    both = nuisance_severity({**base, "yaw": np.full(1, cfg.max_yaw), "blur": np.full(1, 1.15)}, cfg)
    assert both[0] == pytest.approx(1 - (1 - 1.0) * (1 - 0.5), abs=1e-6)
    assert identity_info(np.array([0.0, 0.5, 1.0]), 1.0).tolist() == pytest.approx([1.0, 0.875, 0.0])
    assert identity_info(np.array([1.0]), 0.6).tolist() == pytest.approx([0.4])


def test_images_show_a_blend_of_their_identity_and_a_random_face():
    from facekd.synthfaces.identities import mix_identities

    own = identity_params(np.random.default_rng(0), np.zeros(3, np.int64))
    other = identity_params(np.random.default_rng(1), np.zeros(3, np.int64))
    keep = np.array([1.0, 0.25, 0.0], np.float32)
    mixed = mix_identities(own, other, keep)
    for key in own:
        assert np.allclose(mixed[key][0], own[key][0]) and np.allclose(mixed[key][2], other[key][2])
        assert np.allclose(mixed[key][1], 0.25 * own[key][1] + 0.75 * other[key][1], atol=1e-6)


def test_identity_info_recorded_per_image(quick):
    from facekd.synthfaces.render import identity_info

    for ds in (quick.train, quick.val, quick.test):
        assert np.array_equal(ds.identity_info, identity_info(ds.severity, quick.config.identity_loss))
        assert (ds.severity[~ds.hard] == 0).all() and (ds.identity_info[~ds.hard] == 1).all()
    no_loss = make_synthfaces(SynthFacesConfig.preset("quick", identity_loss=0.0))
    assert (no_loss.train.identity_info == 1).all()
    easy = ~quick.train.hard  # same draws, same easy images: identical pixels
    assert np.array_equal(no_loss.train.images[easy], quick.train.images[easy])
    assert not np.array_equal(no_loss.train.images[~easy], quick.train.images[~easy])


def test_noisy_rows_rate_caps_and_determinism():
    from facekd.synthfaces.identities import noisy_rows

    labels = np.repeat(np.arange(50), np.arange(50) % 9 + 2)
    noisy = noisy_rows(labels, 0.1, np.random.default_rng(0))
    assert noisy.sum() == round(0.1 * labels.size)
    per_class = np.bincount(labels[noisy], minlength=50)
    assert (per_class <= (np.bincount(labels) - 1) // 2).all()  # every identity keeps a clean majority
    assert np.array_equal(noisy, noisy_rows(labels, 0.1, np.random.default_rng(0)))
    assert not noisy_rows(labels, 0.0, np.random.default_rng(0)).any()
    tight = noisy_rows(np.repeat(np.arange(10), 3), 0.45, np.random.default_rng(0))
    assert tight.sum() == 10  # only one of each three may be wrong


@pytest.mark.slow
def test_label_noise_is_recorded_and_ms1m_like_by_default():
    cfg = SynthFacesConfig.preset("default", num_train_identities=200, num_val_identities=2, num_test_identities=2)
    cfg = SynthFacesConfig(**{**cfg.model_dump(), "num_genuine_pairs": 10, "num_impostor_pairs": 100})
    assert SynthFacesConfig().label_noise == 0.05
    data = make_synthfaces(cfg)
    tr = data.train
    assert tr.noisy.sum() == round(0.05 * len(tr))
    assert np.array_equal(tr.noisy, tr.true_identity_ids != tr.identity_ids)
    outliers = tr.true_identity_ids == -1
    assert outliers.sum() == pytest.approx(0.5 * tr.noisy.sum(), abs=4 * np.sqrt(tr.noisy.sum()))
    flips = tr.noisy & ~outliers
    group_of = dict(zip(tr.identity_ids.tolist(), tr.groups.tolist()))
    assert all(group_of[int(t)] == int(g) for t, g in zip(tr.true_identity_ids[flips], tr.groups[flips]))
    assert set(tr.true_identity_ids[flips]) <= set(tr.identity_ids)  # a flip shows another train identity
    for ds in (data.val, data.test):
        assert not ds.noisy.any() and np.array_equal(ds.true_identity_ids, ds.identity_ids)
    clean = make_synthfaces(SynthFacesConfig(**{**cfg.model_dump(), "label_noise": 0.0}))
    same = ~tr.noisy & ~tr.hard
    assert np.array_equal(clean.train.images[same], tr.images[same])
    assert not np.array_equal(clean.train.images[flips], tr.images[flips])


@pytest.mark.slow
def test_val_split_from_the_data_block():
    from facekd.data.spec import DataConfig, build_dataset

    val = build_dataset(DataConfig(kind="synthfaces", preset="quick", split="val"))
    data = make_synthfaces(SynthFacesConfig.preset("quick"))
    assert np.array_equal(val.images, data.val.images) and val.split == "val"
    with pytest.raises(ValueError, match="splits train / val / test"):
        data.split("query")


def test_eval_group_proportions_balance_val_and_test_only():
    cfg = SynthFacesConfig.preset("quick", num_test_identities=20, eval_group_proportions=(0.25, 0.25, 0.25, 0.25))
    data = make_synthfaces(cfg)
    for ds in (data.val, data.test):
        per_id = ds.groups[np.unique(ds.labels, return_index=True)[1]]
        assert np.bincount(per_id).tolist() == [5, 5, 5, 5]
    per_id = data.train.groups[np.unique(data.train.labels, return_index=True)[1]]
    assert np.bincount(per_id).tolist() == [22, 10, 5, 3]
    with pytest.raises(ValueError, match="one entry per group"):
        SynthFacesConfig(eval_group_proportions=(0.5, 0.5))
