"""SynthPersons: Market-1501 layout and names, the export read back by the Market-1501 reader, the
data kind, and that a trained network beats a random one (the data is not colour-coded)."""

import re

import numpy as np
import pytest
import torch

from facekd.data.reid import IMAGENET_MEAN, IMAGENET_STD, ReIDDataset
from facekd.synthpersons import SynthPersonsConfig, make_synthpersons

MARKET_NAME = re.compile(r"^(-1|\d{4})_c([1-6])s([1-6])_(\d{6})_(\d{2})\.jpg$")


@pytest.fixture(scope="module")
def quick():
    return make_synthpersons(SynthPersonsConfig.preset("quick"))


@pytest.mark.slow
def test_market_layout_and_names(quick):
    cfg = quick.config
    for ds in (quick.train, quick.query, quick.gallery):
        assert ds.images.shape[1:] == (64, 32, 3) and ds.image_size == (64, 32)
        assert ds.names == sorted(ds.names) and len(set(ds.names)) == len(ds.names)
        for name, pid, cam in zip(ds.names, ds.pids, ds.camids):
            m = MARKET_NAME.match(name)
            assert m is not None, name
            assert int(m.group(1)) == pid and int(m.group(2)) == cam + 1
    assert all(MARKET_NAME.match(n) and n.startswith("-1_") for n in quick.junk_names)
    train, test = set(quick.train.pids), set(quick.query.pids)
    assert len(train) == cfg.num_train_identities and len(test) == cfg.num_test_identities
    assert not train & test and max(train | test) <= 1501 and min(train | test) >= 1
    assert set(quick.gallery.pids) - {0} == test  # gallery: every test person, plus distractors
    q = quick.query
    assert len(set(zip(q.pids.tolist(), q.camids.tolist()))) == len(q)  # one query per person and camera
    for pid in test:  # every query has a match in another camera
        cams = set(quick.gallery.camids[quick.gallery.pids == pid])
        assert len(cams) >= 2 and cams == set(q.camids[q.pids == pid])
    n_gallery = len(quick.gallery) + len(quick.junk_names)
    assert (quick.gallery.pids == 0).sum() == pytest.approx(cfg.distractor_fraction * n_gallery, abs=1)
    assert len(quick.junk_names) == pytest.approx(cfg.junk_fraction * n_gallery, abs=1)
    assert quick.train.labels.tolist() == np.unique(quick.train.pids, return_inverse=True)[1].tolist()


@pytest.mark.slow
def test_deterministic_from_seed(quick):
    again = make_synthpersons(SynthPersonsConfig.preset("quick"))
    assert np.array_equal(quick.gallery.images, again.gallery.images) and quick.query.names == again.query.names
    other = make_synthpersons(SynthPersonsConfig.preset("quick", seed=1))
    assert not np.array_equal(quick.train.images[:10], other.train.images[:10])
    assert quick.train.fingerprint() == again.train.fingerprint() != other.train.fingerprint()


def test_export_is_read_unchanged_by_the_market1501_reader(quick, tmp_path):
    from facekd.data.images import decode_image, encode_jpeg
    from facekd.synthpersons.export import export_synthpersons

    s = export_synthpersons(quick, tmp_path, quality=95)
    assert s["gallery_junk"] == len(quick.junk_names)
    for split in ("train", "query", "gallery"):
        mem = quick.split(split)
        disk = ReIDDataset(tmp_path, "market1501", split, image_size=(64, 32))
        assert [p.name for p in disk.paths] == mem.names
        assert np.array_equal(disk.pids, mem.pids) and np.array_equal(disk.camids, mem.camids)
        assert np.array_equal(disk.labels, mem.labels) and disk.num_classes == mem.num_classes
        assert np.array_equal(disk.load_image(0), decode_image(encode_jpeg(mem.images[0], 95), "ref"))
        a, b = disk[3], mem[3]
        assert int(a["camid"]) == int(b["camid"]) and int(a["label"]) == int(b["label"])
        assert a["image"].shape == b["image"].shape and (a["image"] - b["image"]).abs().mean() < 0.2
    assert ReIDDataset(tmp_path, "market1501", "gallery").num_junk == len(quick.junk_names)
    with pytest.raises(ValueError, match="already exist"):
        export_synthpersons(quick, tmp_path)


def test_export_command(tmp_path):
    from typer.testing import CliRunner

    from facekd.cli import app

    args = ["export-synth-persons", str(tmp_path / "out"), "--preset", "quick", "--set", "num_train_identities=4"]
    res = CliRunner().invoke(app, [*args, "--set", "num_test_identities=3"])
    assert res.exit_code == 0, res.output
    assert "train:" in res.output and (tmp_path / "out" / "bounding_box_test").is_dir()
    assert ReIDDataset(tmp_path / "out", "market1501", "train", image_size=(64, 32)).num_classes == 4
    bad = CliRunner().invoke(app, ["export-synth-persons", str(tmp_path / "x"), "--set", "num_cameras=9"])
    assert bad.exit_code != 0 and "num_cameras" in bad.output


@pytest.mark.slow
def test_data_kind_items_match_the_reader_contract():
    from facekd.data.spec import DataConfig, build_dataset

    ds = build_dataset(DataConfig(kind="synthpersons", preset="quick", split="query"))
    item = ds[0]
    assert set(item) == {"image", "label", "index", "camid"} and item["image"].shape == (3, 64, 32)
    x = torch.from_numpy(ds.images[0]).permute(2, 0, 1).float() / 255
    ref = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(item["image"], ref)
    assert int(item["label"]) == ds.pids[0] and int(item["camid"]) == ds.camids[0]
    with pytest.raises(ValueError, match="unknown SynthPersons preset|Input should be"):
        DataConfig(kind="synthpersons", preset="huge")
    with pytest.raises(ValueError, match="num_train_identities"):
        DataConfig(kind="synthpersons", synthpersons={"num_train_identities": 1})


def test_whole_image_colour_does_not_find_people(quick):
    """The shortcut a colour-coded set allows: nearest neighbours by the mean colour of crop
    regions rank other people seen by the same camera first."""
    from facekd.evaluate.reid import evaluate_reid_features

    def colour(ds):
        f = ds.images.reshape(len(ds), 4, 16, 2, 16, 3).mean((2, 4)).reshape(len(ds), -1)
        f = f - f.mean(1, keepdims=True)
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)

    q, g = quick.query, quick.gallery
    res = evaluate_reid_features(colour(q), colour(g), q.pids, g.pids, q.camids, g.camids)
    assert res.mAP < 0.1 and res.cmc[0] < 0.1


def test_config_validation():
    with pytest.raises(ValueError, match="1501"):
        SynthPersonsConfig(num_train_identities=1000, num_test_identities=600)
    with pytest.raises(ValueError, match="min_cameras"):
        SynthPersonsConfig(num_cameras=2, min_cameras=3, max_cameras=3)
    assert SynthPersonsConfig().image_size == (128, 64)
    assert SynthPersonsConfig().fingerprint() != SynthPersonsConfig(seed=1).fingerprint()


@pytest.mark.slow
def test_a_briefly_trained_network_beats_a_random_one():
    from facekd.synthpersons.probe import reid_metrics, reid_probe_net, train_reid_probe

    torch.set_num_threads(1)
    data = make_synthpersons(SynthPersonsConfig.preset("quick"))
    random = reid_metrics(reid_probe_net(0), data.query, data.gallery)
    trained = reid_metrics(train_reid_probe(data.train, steps=300), data.query, data.gallery)
    print(f"mAP random {random.mAP:.3f} trained {trained.mAP:.3f}; rank-1 {random.cmc[0]:.3f} {trained.cmc[0]:.3f}")
    assert trained.mAP > 3 * random.mAP and trained.mAP - random.mAP > 0.05
    assert trained.cmc[0] > random.cmc[0] + 0.03
