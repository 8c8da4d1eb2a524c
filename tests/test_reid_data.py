"""Market-1501 / DukeMTMC-reID loaders on folders of tiny JPEGs written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.data.reid import IMAGENET_MEAN, IMAGENET_STD, ReIDDataset


def make(folder, names, color=100):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((16, 8, 3), color, dtype=np.uint8)).save(folder / n, quality=100)


def market(root):
    base = root / "Market-1501-v15.09.15"
    make(
        base / "bounding_box_train",
        ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000101_01.jpg", "-1_c1s1_000001_00.jpg"],
    )
    (base / "bounding_box_train" / "Thumbs.db").write_bytes(b"ignored")
    make(base / "query", ["0002_c1s1_000801_00.jpg"])
    make(base / "bounding_box_test", ["0000_c1s1_000001_01.jpg", "-1_c2s1_000002_01.jpg", "0002_c6s1_000301_02.jpg"])
    return base


def test_market_train_relabels_and_drops_junk(tmp_path):
    market(tmp_path)
    ds = ReIDDataset(tmp_path, "market1501", "train")
    assert len(ds) == 3 and ds.num_junk == 1
    assert ds.pids.tolist() == [2, 2, 7] and ds.labels.tolist() == [0, 0, 1] and ds.num_classes == 2
    assert ds.camids.tolist() == [0, 1, 2]
    item = ds[2]
    assert item["image"].shape == (3, 256, 128) and int(item["camid"]) == 2 and int(item["label"]) == 1
    expect = (100 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(item["image"][:, 100, 60], expect, atol=2e-2, rtol=0)


def test_market_gallery_keeps_distractors(tmp_path):
    root = market(tmp_path)
    ds = ReIDDataset(root, "market1501", "gallery")  # the dataset folder itself also works
    assert ds.pids.tolist() == [0, 2] and ds.labels.tolist() == [0, 2] and ds.camids.tolist() == [0, 5]
    q = ReIDDataset(tmp_path, "market1501", "query", normalize="face", image_size=(32, 16))
    assert q[0]["image"].shape == (3, 32, 16)
    torch.testing.assert_close(q[0]["image"][:, 5, 5], torch.full((3,), 100 / 127.5 - 1), atol=2e-2, rtol=0)


def test_lowercase_root_and_camera_check(tmp_path):
    make(tmp_path / "market1501" / "query", ["0003_c7s1_000001_00.jpg"])
    with pytest.raises(ValueError, match=r"0003_c7s1_000001_00.jpg: camera 7 outside 1..6"):
        ReIDDataset(tmp_path, "market1501", "query")
    make(tmp_path / "m2" / "market1501" / "query", ["x_c1.jpg"])
    with pytest.raises(ValueError, match="does not start with '<pid>_c<camera>'"):
        ReIDDataset(tmp_path / "m2", "market1501", "query")


def test_duke(tmp_path):
    base = tmp_path / "dukemtmc-reid" / "DukeMTMC-reID"
    make(base / "bounding_box_train", ["0005_c2_f0046985.jpg", "0005_c8_f0046999.jpg", "0010_c1_f0000001.jpg"])
    ds = ReIDDataset(tmp_path, "dukemtmc", "train")
    assert ds.camids.tolist() == [1, 7, 0] and ds.labels.tolist() == [0, 0, 1]
    make(base / "query", ["0005_c9_f0046985.jpg"])
    with pytest.raises(ValueError, match="camera 9 outside 1..8"):
        ReIDDataset(tmp_path, "dukemtmc", "query")
    with pytest.raises(FileNotFoundError, match="no bounding_box_train"):
        ReIDDataset(tmp_path / "nothing", "dukemtmc", "train")
