"""The `data:` block: kinds, splits (held-out val for every kind), augmentation as data, and
fingerprints that describe content only and agree across processes."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.config import ConfigError, load_config
from facekd.data.recordio import write_recordio
from facekd.data.registry import kind_names
from facekd.data.spec import DataConfig, build_dataset
from facekd.data.split import holdout_rows

SIZE = 8


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    img = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def rec(tmp_path):
    write_recordio([(jpeg(k), k // 4) for k in range(20)], f"{tmp_path}/rec/")
    return tmp_path / "rec"


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), [2, 3, 5, 10, 20, 40])
    images = rng.integers(0, 256, (labels.size, SIZE, SIZE, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=labels)
    return tmp_path / "a.npz"


@pytest.fixture
def folder(tmp_path):
    for k in range(6):
        p = tmp_path / "faces" / f"id{k // 2}" / f"{k}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg(k))
    return tmp_path / "faces"


FINGERPRINT = textwrap.dedent(
    """
    import sys
    from facekd.config import DataConfig, build_dataset
    ds = build_dataset(DataConfig.model_validate({"kind": sys.argv[1], "path": sys.argv[2], "hflip": True}))
    print(ds.fingerprint())
    """
)


@pytest.mark.slow
def test_recordio_fingerprint_with_hflip_is_the_same_in_two_processes(rec):
    """With hflip the fingerprint hashed repr(transform), a memory address: resumes were refused."""
    runs = [
        subprocess.run(
            [sys.executable, "-c", FINGERPRINT, "recordio", str(rec)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert len(runs[0]) == 16 and runs[0] == runs[1]


@pytest.mark.slow
def test_augmentation_is_data_and_not_content(rec, folder, arrays):
    for cfg in (
        {"kind": "recordio", "path": rec},
        {"kind": "folder", "path": folder},
        {"kind": "arrays", "path": arrays},
        {"kind": "synthfaces", "preset": "quick"},
    ):
        plain = build_dataset(DataConfig.model_validate(cfg))
        flipped = build_dataset(DataConfig.model_validate({**cfg, "augment": {"hflip": True}}))
        assert plain.augmentation == {"hflip": False} and flipped.augmentation == {"hflip": True}
        assert flipped.fingerprint() == plain.fingerprint()
        back = flipped.without_augmentation()
        assert back.augmentation == {"hflip": False} and back.fingerprint() == plain.fingerprint()
        assert np.array_equal(back.labels, plain.labels) and len(back) == len(plain)
        for i in (0, len(plain) - 1):
            torch.testing.assert_close(back[i]["image"], plain[i]["image"])
            assert int(back[i]["index"]) == i
        torch.manual_seed(0)
        seen = {bool(torch.equal(flipped[0]["image"], plain[0]["image"])) for _ in range(30)}
        assert seen == {True, False}  # flipped half the time


def test_hflip_shorthand_and_refusals(rec):
    cfg = DataConfig.model_validate({"kind": "recordio", "path": rec, "hflip": True})
    assert cfg.augment.hflip and "hflip" not in cfg.model_dump()
    with pytest.raises(ValueError, match="contradicts augment.hflip"):
        DataConfig.model_validate({"kind": "recordio", "path": rec, "hflip": True, "augment": {"hflip": False}})
    with pytest.raises(ValueError, match="augment.blur"):
        DataConfig.model_validate({"kind": "recordio", "path": rec, "augment": {"blur": 1}})
    with pytest.raises(ValueError, match="not passed as callables"):
        build_dataset(DataConfig(kind="recordio", path=rec)).with_augmentation(lambda x: x)  # type: ignore[arg-type]


def test_every_kind_is_registered_and_unused_keys_are_refused(rec):
    assert kind_names() == [
        "arrays",
        "dukemtmc",
        "folder",
        "idx",
        "list",
        "market1501",
        "recordio",
        "synthfaces",
        "synthpersons",
    ]
    with pytest.raises(ValueError, match="unknown data kind 'lmdb'; known: arrays, "):
        DataConfig(kind="lmdb")
    with pytest.raises(ValueError, match="kind recordio does not use preset"):
        DataConfig(kind="recordio", path=rec, preset="quick")
    with pytest.raises(ValueError, match=r"one int image_size \(square images\)"):
        DataConfig(kind="recordio", path=rec, image_size=(8, 4))


@pytest.mark.parametrize(
    "kind,split,splits",
    [
        ("recordio", "test", "train"),
        ("folder", "query", "train"),
        ("arrays", "test", "train"),
        ("idx", "query", "train / test"),
        ("synthfaces", "gallery", "train / val / test"),
        ("market1501", "test", "train / query / gallery"),
    ],
)
def test_a_split_the_kind_lacks_is_an_error_naming_kind_and_splits(tmp_path, kind, split, splits):
    path = {} if kind == "synthfaces" else {"path": str(tmp_path)}
    extra = "" if kind == "synthfaces" else r" \(and val with val_fraction\)"  # synthfaces has its own val
    with pytest.raises(ConfigError, match=rf"data: kind {kind} has split {splits}{extra}, not {split}"):
        load_config(None, [f"data.kind={kind}", f"data.split={split}"] + [f"data.{k}={v}" for k, v in path.items()])


def test_split_val_needs_val_fraction(rec):
    with pytest.raises(ValueError, match="split val of kind recordio needs val_fraction"):
        DataConfig(kind="recordio", path=rec, split="val")


def test_val_split_is_stratified_disjoint_and_deterministic(arrays):
    base = {"kind": "arrays", "path": str(arrays), "val_fraction": 0.25, "val_seed": 3}
    full = build_dataset(DataConfig(kind="arrays", path=arrays))
    train = build_dataset(DataConfig.model_validate({**base, "split": "train"}))
    val = build_dataset(DataConfig.model_validate({**base, "split": "val"}))
    assert len(train) + len(val) == len(full) and len(val) == round(0.25 * len(full))
    assert not set(train.rows.tolist()) & set(val.rows.tolist())
    counts, val_counts = np.bincount(full.labels), np.bincount(val.labels, minlength=6)
    assert np.all(val_counts <= counts - 1)  # every class keeps a training image
    assert np.all(np.abs(val_counts - 0.25 * counts) < 1 + 1e-9)  # floor or ceil of its share, or capped
    assert train.num_classes == val.num_classes == full.num_classes == 6
    np.testing.assert_array_equal(val.labels, full.labels[val.rows])
    item = val[2]
    assert int(item["index"]) == 2 and int(item["label"]) == full.labels[val.rows[2]]
    torch.testing.assert_close(item["image"], full[int(val.rows[2])]["image"])
    again = build_dataset(DataConfig.model_validate({**base, "split": "val"}))
    assert np.array_equal(again.rows, val.rows) and again.fingerprint() == val.fingerprint()
    assert len({train.fingerprint(), val.fingerprint(), full.fingerprint()}) == 3
    other = build_dataset(DataConfig.model_validate({**base, "split": "val", "val_seed": 4}))
    assert not np.array_equal(other.rows, val.rows)
    flipped = build_dataset(DataConfig.model_validate({**base, "split": "val", "augment": {"hflip": True}}))
    assert flipped.augmentation == {"hflip": True} and flipped.without_augmentation().augmentation == {"hflip": False}
    assert flipped.fingerprint() == val.fingerprint()


def test_holdout_rows_allocation_matches_a_slow_largest_remainder():
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, rng.integers(1, 12), rng.integers(2, 200))
        f = float(rng.uniform(0.05, 0.6))
        rows = holdout_rows(labels, f, seed=0)
        got = {c: int((labels[rows] == c).sum()) for c in np.unique(labels)}
        # slow reference: floor of each share, capped at n-1; the rest one by one to the largest
        # remainders among the classes with room (ties in any order)
        n = {c: int((labels == c).sum()) for c in got}
        take = {c: min(int(np.floor(f * n[c])), n[c] - 1) for c in n}
        extra = round(f * labels.size) - sum(take.values())
        for c in sorted(n, key=lambda c: -(f * n[c] - np.floor(f * n[c]))):
            if extra > 0 and take[c] < n[c] - 1:
                take[c] += 1
                extra -= 1
        remainders = {c: f * n[c] - np.floor(f * n[c]) for c in n}
        assert sum(got.values()) == sum(take.values())
        for c in n:
            assert got[c] <= n[c] - 1 and abs(got[c] - take[c]) <= 1
            if got[c] != take[c]:  # only a tie in the remainder may be broken the other way
                assert any(np.isclose(remainders[c], remainders[o]) for o in n if o != c)


def test_idx_test_split_with_val_fraction_is_untouched(tmp_path):
    import gzip
    import struct

    def idx(path, arr, code):
        header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.astype(">u1").tobytes())

    rng = np.random.default_rng(0)
    for stem, n in (("train", 40), ("t10k", 12)):
        idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 0x08)
        idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10, 0x08)
    test = build_dataset(DataConfig(kind="idx", path=tmp_path, split="test", val_fraction=0.5))
    assert len(test) == 12
    assert len(build_dataset(DataConfig(kind="idx", path=tmp_path, split="val", val_fraction=0.5))) == 20
