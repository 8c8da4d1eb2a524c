"""Samplers as registered objects: one options schema for YAML and CLI, describe() as data,
lists that depend only on (seed, epoch, options), expensive state computed once, searches."""

import json
import math

import numpy as np
import pytest
import torch

from facekd.bias import bandwidth_rule, kde
from facekd.bias.cells import identity_cells
from facekd.bias.nearest import (
    QUERY_BLOCK,
    FlatSearch,
    IVFSearch,
    TorchSearch,
    nearest_to_random_directions,
    random_directions,
)
from facekd.bias.samplers import SAMPLERS, epoch_fn
from facekd.bias.sampling import SamplerConfig, build_sampler
from facekd.bias.shortlist import resolve_dtype
from facekd.data.sampler import IndexListSampler


class _Data:
    """The two things build_sampler reads from a dataset: len() and labels."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return self.labels.size


def _clustered(n=240, d=16, classes=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.standard_normal((classes, d))
    x = centres[labels] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def _build(name, options=None, seed=3, path=None, n=240):
    x, labels = _clustered(n)
    cfg = SamplerConfig(name=name, options=options or {}, path=path)
    return build_sampler(cfg, _Data(labels), seed, x, progress=False)


@pytest.mark.parametrize(
    "name,options",
    [("uniform", {}), ("usi", {}), ("intrinsic", {}), ("extrinsic", {}), ("pk", {"p": 4, "k": 4})],
)
def test_every_sampler_describes_itself_and_draws_per_epoch(name, options):
    s = _build(name, options)
    d = s.describe()
    assert d["name"] == name and json.loads(json.dumps(d)) == d  # plain JSON data
    a, b = s.indices(0), s.indices(1)
    assert a.dtype == np.int64 and a.ndim == 1 and 0 <= a.min() and a.max() < 240
    assert np.array_equal(a, _build(name, options).indices(0))  # a function of (seed, epoch, options)
    assert not np.array_equal(a, b)
    assert np.array_equal(s(1), b)  # callable: what IndexListSampler regenerates


def test_registry_lists_the_samplers():
    assert set(SAMPLERS) >= {"uniform", "file", "intrinsic", "extrinsic", "usi", "pk"}


def test_samplers_differing_only_in_bandwidth_describe_differently():
    a = _build("intrinsic", {"bandwidth": "12deg"}).describe()
    b = _build("intrinsic", {"bandwidth": "3deg"}).describe()
    assert a != b and a["options"]["bandwidth"] == pytest.approx(math.radians(12))
    assert _build("intrinsic", {"bandwidth": "12deg"}).describe() == a


def test_bandwidth_auto_and_units_in_a_config_and_refused_angles():
    x, labels = _clustered()
    s = _build("intrinsic", {"bandwidth": "auto"})
    assert s.bandwidth == pytest.approx(bandwidth_rule(x, labels).bandwidth)
    assert s.describe()["options"]["bandwidth"] == pytest.approx(s.bandwidth)
    assert _build("intrinsic", {"bandwidth": "0.2rad"}).bandwidth == pytest.approx(0.2)
    for bad in ("720deg", "0deg", "-3deg", "12", 12):
        with pytest.raises(ValueError, match="bandwidth"):
            SamplerConfig(name="intrinsic", options={"bandwidth": bad})


@pytest.mark.parametrize(
    "cfg,pattern",
    [
        ({"name": "magic"}, r"unknown sampler 'magic'"),
        ({"name": "usi", "options": {"bandwidth": "12deg"}}, r"sampler usi: unknown options \['bandwidth'\]"),
        ({"name": "uniform", "options": {"num": -1}}, r"option num"),
        ({"name": "uniform", "options": {"num": True}}, r"option num"),
        ({"name": "extrinsic", "options": {"search": "hnsw"}}, r"option search"),
        ({"name": "intrinsic", "options": {"density": {"method": "fast"}}}, r"option density.method"),
        ({"name": "file"}, r"path is needed by"),
    ],
)
def test_bad_options_are_one_clear_line(cfg, pattern):
    with pytest.raises(ValueError, match=pattern):
        SamplerConfig(**cfg)


def test_resolved_options_hold_every_default():
    cfg = SamplerConfig(name="intrinsic", options={"bandwidth": "auto"})
    assert cfg.options["bandwidth"] == "auto" and cfg.options["density"]["method"] == "auto"
    assert SamplerConfig(**cfg.model_dump()).options == cfg.options  # a dumped config reloads as is
    assert SamplerConfig(name="pk").options == {"p": 16, "k": 4}


def test_default_uniform_is_the_trainers_shuffle():
    """The config default draws exactly what the trainer's shuffle drew before it was a sampler."""
    s = _build("uniform")
    shuffled = IndexListSampler.shuffled(240, seed=3)
    for epoch in (0, 1, 5):
        shuffled.set_epoch(epoch)
        assert np.array_equal(s.indices(epoch), np.array(list(shuffled)))


def test_file_sampler_reads_and_describes_its_content(tmp_path):
    lst = np.array([3, 3, 7, 0], np.int64)
    np.save(tmp_path / "a.npy", lst)
    s = _build("file", path=tmp_path / "a.npy")
    assert np.array_equal(s.indices(0), lst) and np.array_equal(s.indices(4), lst)
    np.save(tmp_path / "b.npy", lst[::-1].copy())
    assert _build("file", path=tmp_path / "b.npy").describe()["options"]["sha256"] != s.describe()["options"]["sha256"]
    np.save(tmp_path / "c.npy", np.array([0, 240]))
    with pytest.raises(ValueError, match=r"c.npy: indices must lie in \[0, 240\)"):
        _build("file", path=tmp_path / "c.npy")


def test_intrinsic_density_is_computed_once(monkeypatch):
    calls = []
    real = kde.angular_kde

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr("facekd.bias.samplers.intrinsic.angular_kde", counting)
    s = _build("intrinsic", {"num": 50})
    s.describe()
    assert calls == []  # describing needs no density
    for epoch in range(3):
        s.indices(epoch)
    assert calls == [1]


def test_intrinsic_list_is_eq10_draws_with_seed_plus_epoch():
    """Direct implementation: p ∝ 1/f̂ from the exact density, rng.choice with seed + epoch."""
    x, _ = _clustered()
    s = _build("intrinsic", {"bandwidth": "20deg", "num": 500})
    f = kde.kde_exact(x, math.radians(20), progress=False).density
    p = (1 / f) / (1 / f).sum()
    want = np.random.default_rng(3 + 2).choice(240, size=500, replace=True, p=p)
    assert np.array_equal(s.indices(2), want)


def test_extrinsic_list_is_the_brute_force_nearest_row():
    """Block 0 of the direction stream is default_rng(seed)'s normals, as float32 unit rows; each
    draw is the row of largest cosine (float64 brute force here)."""
    x, _ = _clustered()
    s = _build("extrinsic", {"num": 300})
    g = np.random.default_rng(3 + 1).standard_normal((300, x.shape[1])).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    assert np.array_equal(s.indices(1), (g.astype(np.float64) @ x.T.astype(np.float64)).argmax(1))


def test_direction_blocks_are_independent_streams():
    a = random_directions(5, 0, 10, 4)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    assert np.array_equal(a, random_directions(5, 0, 10, 4))
    assert not np.array_equal(a, random_directions(5, 1, 10, 4))
    assert np.array_equal(random_directions(5, 1, 4, 4), random_directions(5, 1, 10, 4)[:4])


def test_torch_search_equals_flat_search_also_when_the_reference_is_streamed():
    x, _ = _clustered(n=3000, d=32)
    q = random_directions(0, 0, 700, 32)
    want = FlatSearch(x).search(q)
    assert np.array_equal(TorchSearch(x).search(q), want)
    # a 64 KiB budget: the 384 KiB reference cannot stay, so it streams in blocks of 128 rows
    streamed = TorchSearch(x, memory_bytes=64 << 10, chunk_bytes=16 << 10)
    assert np.array_equal(streamed.search(q), want)


def test_torch_search_ties_go_to_the_lowest_row():
    x = np.tile(np.eye(4, dtype=np.float32), (3, 1))  # rows 0-3 repeated at 4-7 and 8-11
    q = np.eye(4, dtype=np.float32)
    assert TorchSearch(x, memory_bytes=1 << 10, chunk_bytes=64).search(q).tolist() == [0, 1, 2, 3]


def test_identity_cells_split_large_identities():
    x, _ = _clustered(n=600)
    labels = np.r_[np.zeros(500, int), np.arange(100) % 5 + 1]
    cells = identity_cells(x, labels, cell_max=100)
    assert cells.count == 5 + 5 and np.diff(cells.starts).max() <= 100 + 50  # identity 0 → 5 cells
    assert all(len(set(cells.cell[labels == c])) == 1 for c in range(1, 6))
    np.testing.assert_allclose(cells.means[cells.cell[-1]], x[labels == labels[-1]].mean(0), rtol=1e-5)
    assert sorted(cells.rows.tolist()) == list(range(600))


@pytest.mark.parametrize("coarse", ["float32", "bf16"])
def test_ivf_search_finds_the_exact_row_when_it_probes_every_cell(coarse):
    x, labels = _clustered(n=2000, d=32, classes=40)
    q = random_directions(1, 0, 500, 32)
    exact = FlatSearch(x).search(q)
    assert np.array_equal(IVFSearch(x, labels, nprobe=40, coarse=coarse).search(q), exact)
    recall = (IVFSearch(x, labels, nprobe=8, coarse=coarse).search(q) == exact).mean()
    assert 0.5 < recall < 1.0  # approximate with fewer probes, yet mostly right


def test_ivf_bf16_ranking_probes_nearly_the_cells_float32_does():
    x, labels = _clustered(n=4000, d=64, classes=200)
    q = random_directions(2, 0, 1000, 64)
    probed = [IVFSearch(x, labels, nprobe=16, coarse=c).probes(q) for c in ("float32", "bf16")]
    same = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(*probed, strict=True)])
    assert same > 0.95  # bf16 moves only cells at the edge of the top 16
    with pytest.raises(ValueError, match="dtype must be"):
        IVFSearch(x, labels, coarse="fp16")


def test_extrinsic_auto_is_exact_below_exact_max_and_ivf_above():
    assert _build("extrinsic").describe()["options"]["search"] == "flat"
    s = _build("extrinsic", {"exact_max": 100})
    assert s.describe()["options"] == {
        "num": None,
        "search": "ivf",
        "nprobe": 32,
        "cell_max": 256,
        "coarse": resolve_dtype("auto"),
    }
    assert s.indices(0).shape == (240,)


def test_epoch_fn_is_the_registered_sampler():
    x, labels = _clustered()
    fn = epoch_fn("intrinsic", embeddings=x, labels=labels, num=40, seed=3, bandwidth=math.radians(12))
    assert np.array_equal(fn(1), _build("intrinsic", {"num": 40}).indices(1))
    assert fn.__qualname__ == "epoch_fn.<locals>.<lambda>"  # a plain function, as callers stored it


def test_long_lists_span_several_direction_blocks():
    x, _ = _clustered(n=50, d=4)
    want = np.concatenate(
        [FlatSearch(x).search(random_directions(9, b, r, 4)) for b, r in ((0, QUERY_BLOCK), (1, 100))]
    )
    got = nearest_to_random_directions(FlatSearch(x), 4, QUERY_BLOCK + 100, 9)
    assert np.array_equal(got, want)


def test_run_config_accepts_sampler_options_from_yaml(tmp_path):
    from facekd.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("sampler: {name: intrinsic, options: {bandwidth: auto, num: 10}}\nteacher: {cache: .}\n")
    cfg = load_config(path)
    assert cfg.sampler.options["bandwidth"] == "auto" and cfg.sampler.options["num"] == 10
    path.write_text("sampler: {name: intrinsic, options: {bandwidth: 720deg}}\nteacher: {cache: .}\n")
    with pytest.raises(ValueError, match=r"720deg.*outside"):
        load_config(path)


def test_cli_resample_writes_the_list_a_run_draws(tmp_path):
    import typer
    from typer.testing import CliRunner

    from facekd.bias.commands import register

    x, labels = _clustered()
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "embeddings.npy", x)
    np.save(cache / "labels.npy", labels.astype(np.int64))
    (cache / "meta.json").write_text(json.dumps({"complete": True, "n": len(x), "embedding_size": x.shape[1]}))
    app = typer.Typer()
    register(app)
    out = tmp_path / "s.npy"
    args = ["resample", str(cache), "--method", "intrinsic", "--bandwidth", "auto", "-o", "num=30"]
    r = CliRunner().invoke(app, [*args, "--seed", "3", "--epoch", "2", "--out", str(out), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "bandwidth rule" in r.output
    assert np.array_equal(np.load(out), _build("intrinsic", {"bandwidth": "auto", "num": 30}).indices(2))
    r = CliRunner().invoke(app, [*args[:4], "--bandwidth", "720deg"])
    assert r.exit_code != 0 and "outside (0°, 180°]" in str(r.exception)
    torch.set_num_threads(1)
