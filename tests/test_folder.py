"""Image folders and list files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.data.folder import ImageFolderDataset, ListFileDataset, decode_image


def save(path, value, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path, quality=100)


def test_image_folder(tmp_path):
    save(tmp_path / "bob" / "1.jpg", 10)
    save(tmp_path / "alice" / "2.jpg", 200)
    save(tmp_path / "alice" / "1.png", 50)
    (tmp_path / "alice" / "notes.txt").write_text("x")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["alice", "bob"] and ds.labels.tolist() == [0, 0, 1] and ds.num_classes == 2
    assert ds.image_size == 8 and len(ds) == 3
    item = ds[0]
    torch.testing.assert_close(item["image"], torch.full((3, 8, 8), 50 / 127.5 - 1), atol=1e-2, rtol=0)
    assert int(item["label"]) == 0 and int(item["index"]) == 0
    fp = ds.fingerprint()
    save(tmp_path / "alice" / "2.jpg", 100, size=9)
    assert ImageFolderDataset(tmp_path, image_size=8).fingerprint() != fp
    with pytest.raises(ValueError, match=r"alice/2.jpg: image is 9x9, expected 8x8"):
        ds.load_image(1)
    assert ImageFolderDataset(tmp_path, image_size=8, resize=True)[1]["image"].shape == (3, 8, 8)


def test_list_file(tmp_path):
    save(tmp_path / "imgs" / "a b.jpg", 30)
    save(tmp_path / "imgs" / "c.jpg", 60)
    lst = tmp_path / "train.txt"
    lst.write_text("# comment\nimgs/a b.jpg 3\n\nimgs/c.jpg 1\nimgs/missing.jpg 0\n")
    ds = ListFileDataset(lst)
    assert ds.labels.tolist() == [3, 1, 0] and ds.num_classes == 4 and ds.image_size == 8
    assert int(ds[0]["label"]) == 3
    with pytest.raises(FileNotFoundError, match=r"train.txt:5: .*missing.jpg"):
        ds[2]
    lst.write_text("imgs/c.jpg one\n")
    with pytest.raises(ValueError, match=r"train.txt:1: label 'one' is not a non-negative integer"):
        ListFileDataset(lst)
    lst.write_text("imgs/c.jpg\n")
    with pytest.raises(ValueError, match=r"train.txt:1: expected 'path label'"):
        ListFileDataset(lst)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="no identity sub-folders"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match=r"where: cannot decode image \(3 bytes\)"):
        decode_image(b"abc", "where")
