"""IJB meta readers and 5-point similarity alignment, against direct implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.data.ijb import (
    ARCFACE_DST,
    IJBDataset,
    arcface_template,
    norm_crop,
    read_5pts_score,
    read_face_tid_mid,
    read_ijb_meta,
    read_template_pair_label,
    similarity_transform,
    warp_affine,
)


def similarity(scale, theta, tx, ty):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def test_recovers_known_similarity():
    m = similarity(1.7, 0.4, 12.0, -5.0)
    np.testing.assert_allclose(similarity_transform(ARCFACE_DST, apply(m, ARCFACE_DST)), m, atol=1e-10)


def test_matches_direct_least_squares_on_noisy_points():
    """Direct solve: x' = a x - b y + tx, y' = b x + a y + ty, least squares over (a, b, tx, ty)."""
    rng = np.random.default_rng(0)
    src = ARCFACE_DST + rng.normal(0, 3, (5, 2))
    dst = apply(similarity(0.8, -0.3, 4.0, 9.0), src) + rng.normal(0, 1.5, (5, 2))
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    np.testing.assert_allclose(similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_no_reflection():
    mirrored = ARCFACE_DST * [-1, 1]
    m = similarity_transform(ARCFACE_DST, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def slow_warp(img, m, shape):
    """Per-pixel loop: sample src at m^-1(x, y) bilinearly, zero outside."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    out = np.zeros(shape + img.shape[2:])
    for y in range(shape[0]):
        for x in range(shape[1]):
            sx, sy, _ = inv @ [x, y, 1]
            x0, y0 = math.floor(sx), math.floor(sy)
            for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                if 0 <= yy < img.shape[0] and 0 <= xx < img.shape[1]:
                    w = (1 - abs(sx - xx)) * (1 - abs(sy - yy))
                    out[y, x] += w * img[yy, xx]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def numpy_warp(img, m, out_shape):
    """The float64 numpy warp facekd aligned with before cv2.warpAffine (kept as the reference)."""
    a_inv = np.linalg.inv(m[:, :2])
    h, w = out_shape
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1) - m[:, 2]
    sx, sy = (pts @ a_inv.T).T
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    src = img.astype(np.float64).reshape(img.shape[0], img.shape[1], -1)
    out = np.zeros((h * w, src.shape[2]))
    for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xx, yy = x0 + dx, y0 + dy
        ok = (xx >= 0) & (xx < img.shape[1]) & (yy >= 0) & (yy < img.shape[0])
        out[ok] += wgt[ok, None] * src[yy[ok], xx[ok]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(h, w, *img.shape[2:])


def test_numpy_reference_is_the_slow_loop():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    m = similarity(1.3, 0.5, 2.0, -3.0)
    np.testing.assert_array_equal(numpy_warp(img, m, (10, 12)), slow_warp(img.astype(float), m, (10, 12)))


@pytest.mark.parametrize("kind", ["noise", "smooth"])
def test_cv2_warp_within_one_grey_level_of_numpy(kind):
    """Alignments of 250 × 230 loose crops to 112 × 112, faces partly outside the crop included."""
    rng = np.random.default_rng(2)
    if kind == "noise":  # the hardest case for interpolation: independent pixels
        img = rng.integers(0, 256, (250, 230, 3), dtype=np.uint8)
    else:
        img = np.asarray(Image.fromarray(smooth_face(250)).resize((230, 250)))
    for _ in range(10):
        src = ARCFACE_DST * rng.uniform(0.8, 2.2) + rng.uniform(-40, 150, 2) + rng.normal(0, 2, (5, 2))
        m = similarity_transform(src, arcface_template(112))
        got, want = warp_affine(img, m, (112, 112)), numpy_warp(img, m, (112, 112))
        assert got.shape == want.shape == (112, 112, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want).max() <= 1


def test_warp_border_zero_and_exact_shifts():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_affine(img, similarity(1, 0, 0, 0), (9, 11)), img)
    shifted = warp_affine(img, similarity(1, 0, 2, 1), (9, 11))
    np.testing.assert_array_equal(shifted[1:, 2:], img[:-1, :-2])
    assert (shifted[0] == 0).all() and (shifted[:, :2] == 0).all()
    far = warp_affine(img, similarity(1, 0, 50, 50), (9, 11))
    assert (far == 0).all()
    grey = warp_affine(img[..., :1], similarity(1, 0, 0, 0), (9, 11))
    assert grey.shape == (9, 11, 1)


def smooth_face(size=112):
    y, x = np.mgrid[0:size, 0:size] / size
    return np.stack([255 * x, 255 * y, 128 + 100 * np.sin(6 * x) * np.cos(4 * y)], -1).round().astype(np.uint8)


def test_norm_crop_undoes_a_loose_crop():
    face = smooth_face()
    m = similarity(1.4, 0.3, 40.0, 10.0)
    loose = warp_affine(face, m, (220, 200))
    landmarks = apply(m, ARCFACE_DST)
    aligned = norm_crop(loose, landmarks, 112)
    err = np.abs(aligned[8:-8, 8:-8].astype(int) - face[8:-8, 8:-8])
    assert err.mean() < 1.5 and err.max() <= 6


def test_template_scaling():
    np.testing.assert_allclose(arcface_template(224), ARCFACE_DST * 2)
    np.testing.assert_allclose(arcface_template(128)[:, 0], ARCFACE_DST[:, 0] + 8)


def write_release(root, names=("a/1.jpg", "a/2.jpg", "b/3.jpg"), pair_lines="1 2 1\n1 3 0\n"):
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("a/1.jpg 1 10\na/2.jpg 2 11\nb/3.jpg 3 30\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text(pair_lines)
    m = similarity(1.2, 0.1, 20.0, 15.0)
    lm = apply(m, ARCFACE_DST)
    lines = [f"{n} " + " ".join(f"{v:.4f}" for v in lm.ravel()) + f" {0.5 + 0.1 * k}\n" for k, n in enumerate(names)]
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("".join(lines))
    face = smooth_face()
    for n in names:
        p = root / "loose_crop" / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(warp_affine(face, m, (180, 170))).save(p, quality=98)
    return lm


def test_readers(tmp_path):
    lm = write_release(tmp_path)
    names, tids, mids = read_face_tid_mid(tmp_path / "meta" / "ijbc_face_tid_mid.txt")
    assert names.tolist() == ["a/1.jpg", "a/2.jpg", "b/3.jpg"] and tids.tolist() == [1, 2, 3]
    assert mids.dtype == np.int64 and mids.tolist() == [10, 11, 30]
    t1, t2, lab = read_template_pair_label(tmp_path / "meta" / "ijbc_template_pair_label.txt")
    assert t1.tolist() == [1, 1] and t2.tolist() == [2, 3] and lab.tolist() == [1, 0]
    _names, landmarks, score = read_5pts_score(tmp_path / "meta" / "ijbc_name_5pts_score.txt")
    assert landmarks.shape == (3, 5, 2) and landmarks.dtype == np.float32
    np.testing.assert_allclose(landmarks[0], lm, atol=1e-4)
    np.testing.assert_allclose(score, [0.5, 0.6, 0.7], atol=1e-6)


def test_reader_errors(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("a.jpg 1 2\nb.jpg 1\n")
    with pytest.raises(ValueError, match=r"x.txt:2: expected 3 fields"):
        read_face_tid_mid(p)
    p.write_text("1 2 1\n3 4 2\n")
    with pytest.raises(ValueError, match=r"x.txt: line 2: label 2 is not 0 or 1"):
        read_template_pair_label(p)
    p.write_text("1 2 1\n3 x 0\n")
    with pytest.raises(ValueError, match=r"x.txt: expected lines of three integers"):
        read_template_pair_label(p)
    root = tmp_path / "rel"
    write_release(root, names=("a/1.jpg", "a/9.jpg", "b/3.jpg"))
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score.txt:2: image 'a/9.jpg'"):
        read_ijb_meta(root)
    for bad in ("../outside.jpg", "/etc/passwd", "a/../../b.jpg", "C:\\faces\\x.jpg", "a\\..\\..\\x.jpg"):
        p.write_text(f"ok/1.jpg 1 2\n{bad} 1 2\n")
        with pytest.raises(ValueError, match=r"x.txt:2: image name .* points outside loose_crop/"):
            read_face_tid_mid(p)
        p.write_text(f"{bad} " + " ".join(["1.0"] * 11) + "\n")
        with pytest.raises(ValueError, match=r"x.txt:1: image name .* points outside loose_crop/"):
            read_5pts_score(p)
    root2 = tmp_path / "rel2"
    write_release(root2, pair_lines="1 7 1\n")
    with pytest.raises(ValueError, match=r"template ids \[7\] do not occur"):
        read_ijb_meta(root2)


def test_dataset_aligns_and_flips(tmp_path):
    write_release(tmp_path)
    ds = IJBDataset(tmp_path, "IJBC", flip=True)
    assert len(ds) == 3 and ds.labels.tolist() == [1, 2, 3] and ds.meta.medias.tolist() == [10, 11, 30]
    item = ds[2]
    assert item["image"].shape == (3, 112, 112) and int(item["label"]) == 3 and int(item["index"]) == 2
    torch.testing.assert_close(item["image_flip"], item["image"].flip(-1))
    aligned = ((item["image"].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    assert np.abs(aligned[8:-8, 8:-8] - smooth_face()[8:-8, 8:-8]).mean() < 3
    assert len(ds.fingerprint()) == 16
    with pytest.raises(ValueError, match="IJBB or IJBC"):
        IJBDataset(tmp_path, "IJBA")


def test_export_synthfaces_roundtrip(tmp_path):
    from facekd.data.binset import load_bin
    from facekd.data.folder import decode_image, encode_jpeg
    from facekd.data.recordio import RecordIODataset
    from facekd.synthfaces import SynthFacesConfig, make_synthfaces
    from facekd.synthfaces.export import export_synthfaces

    cfg = SynthFacesConfig(
        image_size=32,
        num_train_identities=5,
        num_test_identities=4,
        max_images_per_identity=4,
        test_images_per_identity=4,
        num_genuine_pairs=20,
        num_impostor_pairs=30,
        num_val_identities=6,  # enough hard and easy val pairs at this size
    )
    data = make_synthfaces(cfg)
    s = export_synthfaces(data, tmp_path, impostors_per_template=3)
    rec = RecordIODataset(tmp_path)
    assert len(rec) == len(data.train) and rec.num_classes == data.train.num_classes and rec.image_size == 32
    order = np.argsort(data.train.labels, kind="stable")
    assert rec.labels.tolist() == data.train.labels[order].tolist()
    jpeg_of = lambda img: decode_image(encode_jpeg(img, 95), "ref")  # noqa: E731  (exports use quality 95)
    assert np.array_equal(rec.load_image(0), jpeg_of(data.train.images[order[0]]))

    images, issame = load_bin(tmp_path / "synth_val.bin", image_size=32)
    assert issame.reshape(10, 4).tolist() == [[True, True, False, False]] * 10  # 10 folds: 2 same, 2 diff
    i = np.flatnonzero(data.pairs.issame)[0]
    assert np.array_equal(images[0], jpeg_of(data.test.images[data.pairs.a[i]]))

    ijb = IJBDataset(tmp_path / "IJBC", image_size=32)
    assert len(ijb) == len(data.test) == s["ijb_images"] and s["ijb_templates"] == 8
    assert ijb.meta.pairs_label.sum() == 4 and (ijb.meta.faceness == 1).all()
    t_ident = {int(t): int(lab) for t, lab in zip(ijb.meta.templates, data.test.labels)}
    same = [t_ident[a] == t_ident[b] for a, b in zip(ijb.meta.pairs_t1, ijb.meta.pairs_t2)]
    assert same == ijb.meta.pairs_label.astype(bool).tolist()
    for row in range(3):  # alignment undoes the random loose crop
        aligned = ((ijb[row]["image"].permute(1, 2, 0) + 1) * 127.5).numpy()
        err = np.abs(aligned - data.test.images[row]).mean()
        other = np.abs(aligned - data.test.images[row + 8]).mean()
        assert err < 15 and err < other / 2


def test_cli_export_synth(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from facekd.data.commands import register

    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(
        app,
        [
            "export-synth",
            str(tmp_path / "out"),
            "--set",
            "num_train_identities=3",
            "--set",
            "num_test_identities=3",
            "--set",
            "image_size=16",
            "--set",
            "max_images_per_identity=3",
            "--set",
            "test_images_per_identity=4",
            "--set",
            "num_genuine_pairs=10",
            "--set",
            "num_impostor_pairs=10",
            "--set",
            "num_val_identities=6",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["image_size"] == 16 and summary["ijb_templates"] == 6 and summary["bin_pairs"] == 20
    assert (tmp_path / "out" / "synth_val.bin").is_file() and "IJB: 12 images" in res.output
    res = CliRunner().invoke(app, ["export-synth", str(tmp_path / "x"), "--set", "image_size"])
    assert res.exit_code != 0 and "expected key=value" in res.output
