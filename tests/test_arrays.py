import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.data import transforms as T
from facekd.data.arrays import ArrayDataset, load_fashion_mnist, read_idx, save_grid


def idx_bytes(type_code: int, dims, payload: bytes) -> bytes:
    """IDX by hand: 0x00 0x00 <type> <ndim>, big-endian uint32 dims, then the payload."""
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def test_read_idx_uint8_images_and_labels(tmp_path):
    pixels = bytes(range(12))
    p = tmp_path / "img"
    p.write_bytes(idx_bytes(0x08, [3, 2, 2], pixels))
    assert p.read_bytes()[:4] == b"\x00\x00\x08\x03"  # magic 0x00000803
    arr = read_idx(p)
    assert arr.dtype == np.uint8 and arr.shape == (3, 2, 2)
    assert arr[1, 0, 1] == 5 and arr[2, 1, 1] == 11
    lab = tmp_path / "lab.gz"
    lab.write_bytes(gzip.compress(idx_bytes(0x08, [4], bytes([9, 0, 3, 7]))))
    assert read_idx(lab).tolist() == [9, 0, 3, 7]


def test_read_idx_big_endian_wider_types(tmp_path):
    p = tmp_path / "ints"
    p.write_bytes(idx_bytes(0x0C, [2, 2], struct.pack(">4i", 1, -2, 70000, 3)))
    assert read_idx(p).tolist() == [[1, -2], [70000, 3]]
    q = tmp_path / "floats"
    q.write_bytes(idx_bytes(0x0D, [2], struct.pack(">2f", 1.5, -0.25)))
    out = read_idx(q)
    assert out.dtype.byteorder in ("=", "<", "|") and out.tolist() == [1.5, -0.25]


@pytest.mark.parametrize(
    "raw,match",
    [
        (b"\x00\x00\x08", "truncated IDX header"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad IDX magic number 0x01000801"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "bad IDX magic"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 3), "truncated IDX header"),
        (idx_bytes(0x08, [2, 3], bytes(5)), r"truncated IDX data: shape \(2, 3\) needs 6 bytes, file has 5"),
        (idx_bytes(0x08, [2], bytes(3)), "1 unexpected trailing bytes"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, raw, match):
    p = tmp_path / "bad-idx1-ubyte"
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=match) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_bad_gzip_and_missing(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(idx_bytes(0x08, [4], bytes(4)))[:-6])
    with pytest.raises(ValueError, match="x.gz"):
        read_idx(p)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def test_load_fashion_mnist_from_handwritten_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(0x08, [5, 28, 28], imgs.tobytes())))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(0x08, [5], labels.tobytes()))
    ds = load_fashion_mnist(tmp_path, "test")
    assert len(ds) == 5 and ds.num_classes == 10 and ds.image_size == 28
    item = ds[1]
    assert item["image"].shape == (3, 28, 28) and int(item["label"]) == 9
    expect = torch.from_numpy(imgs[1]).float() / 127.5 - 1
    for ch in range(3):
        assert torch.allclose(item["image"][ch], expect)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path, "train")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(0x08, [4], labels[:4].tobytes()))
    with pytest.raises(ValueError, match="expected 5 labels"):
        load_fashion_mnist(tmp_path, "test")


def test_array_dataset_contract_and_errors():
    imgs = np.zeros((3, 4, 4, 3), np.uint8)
    imgs[1] = 255
    imgs[2, :, 0] = 255  # left column white
    ds = ArrayDataset(imgs, np.array([0, 2, 1]), groups=np.array([1, 1, 0]))
    it = ds[1]
    assert it["image"].dtype == torch.float32 and torch.all(it["image"] == 1.0)
    assert ds[0]["image"].min() == -1.0
    assert it["label"].dtype == torch.int64 and int(it["index"]) == 1
    assert ds.num_classes == 3 and ds.labels.dtype == np.int64 and ds.groups.tolist() == [1, 1, 0]
    flipped = ds.with_augmentation({"hflip": True})
    assert ds.augmentation == {"hflip": False} and flipped.augmentation == {"hflip": True}
    assert flipped.fingerprint() == ds.fingerprint()  # augmentation is not content
    assert flipped.without_augmentation().augmentation == {"hflip": False} and flipped.images is ds.images
    torch.manual_seed(0)
    seen = {float(flipped[2]["image"][0, 0, 0]) for _ in range(20)}
    assert seen == {-1.0, 1.0}  # the white column is sometimes moved to the right edge
    other = ArrayDataset(imgs.copy(), np.array([0, 2, 1]), groups=np.array([1, 1, 0]))
    assert other.fingerprint() == ds.fingerprint()
    imgs2 = imgs.copy()
    imgs2[0, 0, 0, 0] = 1
    assert ArrayDataset(imgs2, np.array([0, 2, 1]), groups=np.array([1, 1, 0])).fingerprint() != ds.fingerprint()
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(imgs.astype(np.float32), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="length 3"):
        ArrayDataset(imgs, np.array([0, 1]))
    with pytest.raises(ValueError, match="label 2 at row 1 >= num_classes 2"):
        ArrayDataset(imgs, np.array([0, 2, 1]), num_classes=2)
    with pytest.raises(ValueError, match="square"):
        ArrayDataset(np.zeros((1, 4, 5), np.uint8), np.array([0]))
    with pytest.raises(IndexError):
        ds[3]


def test_transforms():
    x = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(T.denormalize(T.normalize(x)), x)
    assert T.normalize(x)[0] == -1 and T.normalize(x)[-1] == 1
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(8, 3, 4, 5)
    out = T.random_hflip(batch, generator=g)
    coins = torch.rand(8, generator=torch.Generator().manual_seed(0)) < 0.5
    for i in range(8):  # slow reference: flip each image by hand
        ref = batch[i][:, :, list(range(4, -1, -1))] if coins[i] else batch[i]
        assert torch.equal(out[i], ref)
    assert torch.equal(T.random_hflip(batch[0], p=1.0), T.hflip(batch[0]))
    const = torch.full((2, 3, 8, 8), 0.25)
    small = T.resize(const, 4)
    assert small.shape == (2, 3, 4, 4) and torch.allclose(small, torch.full_like(small, 0.25))
    assert T.resize(const[0], (16, 12)).shape == (3, 16, 12)
    assert T.to_numpy_hwc(T.normalize(torch.zeros(3, 2, 2))).shape == (2, 2, 3)


def test_save_grid(tmp_path):
    imgs = np.stack([np.full((4, 5, 3), v, np.uint8) for v in (10, 20, 30)])
    path = tmp_path / "grid.png"
    save_grid(imgs, path, ncol=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 5 + 1, 2 * 6 + 1, 3)
    assert (grid[1:5, 1:6] == 10).all() and (grid[1:5, 7:12] == 20).all() and (grid[6:10, 1:6] == 30).all()
    assert (grid[6:10, 7:12] == 128).all()  # empty cell
