"""INT8 post-training quantization: calibration data, the quantized graph (size, QDQ, batch 1 and
> 1, fidelity), calibrators, compaction, the fp32 / int8 comparison, `facekd quantize` and the
model card of `facekd quantize` and `facekd export`."""

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnxruntime.quantization.shape_inference import quant_pre_process

from facekd.cli import app
from facekd.models import get_model
from facekd.onnx import export_onnx
from facekd.quant.calibration import DatasetCalibrationReader, data_block, load_dataset
from facekd.quant.measure import INT8_EXEMPT_CHECKS, mfr_checks
from facekd.quant.ptq import compact_qdq, entropy_ranges, quantize_onnx

torch.set_num_threads(1)
QUICK = {"kind": "synthfaces", "preset": "quick"}


def _trained_like(name, **kw):
    """A model with non-trivial BN statistics (outputs of order 1), in eval mode."""
    torch.manual_seed(0)
    m = get_model(name, **kw)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick SynthFaces block (rendered once into a module-wide cache) and its train split."""
    block = {**QUICK, "cache_dir": str(tmp_path_factory.mktemp("synth"))}
    return block, load_dataset(block)


@pytest.fixture(scope="module")
def mbf(tmp_path_factory, quick):
    """mbf_tiny (128-d) exported to fp32, quantized with MinMax on 64 training images without
    compaction (`loose`), and `compact_qdq` of it (`int8`)."""
    d = tmp_path_factory.mktemp("mbf")
    model = _trained_like("mbf_tiny", embedding_size=128)
    fp32 = export_onnx(model, d / "fp32.onnx")
    loose = quantize_onnx(fp32, d / "loose.onnx", DatasetCalibrationReader(quick[1], 64), compact=False)
    proto = onnx.load(str(loose))
    compact_qdq(proto)
    onnx.save(proto, str(d / "int8.onnx"))
    return model, fp32, d / "int8.onnx", loose


def _invoke(args, capsys):
    """Run `facekd args` as the console script does: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        app(args, prog_name="facekd")
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]


def test_data_block_forms(tmp_path):
    assert data_block({"kind": "synthfaces"}) == {"kind": "synthfaces"}
    assert data_block("{kind: synthfaces, preset: quick}") == QUICK
    (tmp_path / "run.yaml").write_text("data: {kind: synthfaces, preset: quick}\ntrain: {epochs: 1}\n")
    assert data_block(tmp_path / "run.yaml") == QUICK
    (tmp_path / "faces" / "0").mkdir(parents=True)
    assert data_block(tmp_path / "faces") == {"kind": "folder", "path": str(tmp_path / "faces")}
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "train.rec").write_bytes(b"")
    assert data_block(tmp_path / "rec")["kind"] == "recordio"
    assert data_block(tmp_path / "rec" / "train.rec") == {"kind": "recordio", "path": str(tmp_path / "rec" / "train")}
    with pytest.raises(ValueError, match="not an existing file or folder"):
        data_block(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="preset"):
        load_dataset({"kind": "synthfaces", "preset": "huge"})


def test_calibration_reader_draws_distinct_rows(quick):
    ds = quick[1]
    reader = DatasetCalibrationReader(ds, num_images=70, batch_size=32, seed=3)
    batches = list(iter(reader.get_next, None))
    assert [b["data"].shape for b in batches] == [(32, 3, 32, 32), (32, 3, 32, 32), (6, 3, 32, 32)]
    assert len(np.unique(reader.rows)) == 70 and batches[0]["data"].min() >= -1.0
    np.testing.assert_array_equal(batches[0]["data"][0], ds[int(reader.rows[0])]["image"].numpy())
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["data"], batches[0]["data"])
    plain, pixels = (DatasetCalibrationReader(ds, num_images=4, pixel_input=p, seed=3) for p in (False, True))
    np.testing.assert_allclose(pixels.get_next()["data"], plain.get_next()["data"] * 127.5 + 127.5, atol=1e-4)


@pytest.mark.slow
def test_int8_graph_is_small_qdq_and_runs_at_any_batch(mbf, quick):
    _, fp32, int8, _ = mbf
    proto = onnx.load(str(int8))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    conv_weights = [
        inits[n.input[0]]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
    ]
    assert sum(w.dtype == np.int8 and w.ndim == 4 for w in conv_weights) == 28  # every conv of mbf_tiny
    per_channel = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.attribute]
    assert per_channel and all(a.name == "axis" for n in per_channel for a in n.attribute)
    assert [i.name for i in proto.graph.input] == ["data"] and [o.name for o in proto.graph.output] == ["embedding"]
    assert int8.stat().st_size <= 0.35 * fp32.stat().st_size

    x = np.stack([quick[1][i]["image"].numpy() for i in range(5)])
    out = _run(int8, x)
    single = np.concatenate([_run(int8, x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(single, out, atol=1e-5)  # dynamic batch: batch 1 and 5 agree
    ref = _run(fp32, x)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.95, cos


def test_mfr_checks_on_int8_mark_what_does_not_apply(mbf):
    report = mfr_checks(mbf[2], (32, 32), quantized=True)
    assert report["ok"]
    by_name = {c["name"]: c for c in report["checks"]}
    for name, why in INT8_EXEMPT_CHECKS.items():
        assert by_name[name]["applies"] is False and by_name[name]["passed"] is False and by_name[name]["why"] == why
    assert by_name["dynamic batch"]["passed"] and by_name["batch 1 and batch 32 agree"]["passed"]
    assert not mfr_checks(mbf[2], (32, 32), quantized=False)["ok"]  # as an fp32 submission it fails


def _scales(path):
    """{quantized tensor: scale} of a QDQ graph (activations: the QuantizeLinear nodes)."""
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.slow
def test_calibrators_are_selectable_and_reach_the_graph(tmp_path, quick):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8192, 16))
    fp32 = export_onnx(net.eval(), tmp_path / "net.onnx", input_size=32)
    reader = DatasetCalibrationReader(quick[1], 32)
    scales = {
        cal: _scales(quantize_onnx(fp32, tmp_path / f"{cal}.onnx", reader, cal, percentile=99.9, compact=False))
        for cal in ("minmax", "entropy", "percentile")
    }
    assert set(scales["entropy"]) == set(scales["minmax"]) == set(scales["percentile"])
    # the entropy thresholds of onnxruntime's calibrator are what the graph uses (scale = range / 255)
    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    ranges = entropy_ranges(pre, reader)
    inner = [name for name in ranges if name in scales["entropy"]]  # the graph output is renamed
    assert len(inner) == len(ranges) - 1
    for name in inner:
        r = ranges[name][0]
        assert scales["entropy"][name] == pytest.approx(float(r["rmax"] - r["rmin"]) / 255, rel=1e-5), name
    # entropy and percentile clip tails that MinMax keeps: never wider, somewhere narrower
    for cal in ("entropy", "percentile"):
        ratio = np.array([scales[cal][k] / scales["minmax"][k] for k in scales["minmax"]])
        assert ratio.max() <= 1.0 + 1e-6 and ratio.min() < 0.95, (cal, ratio)
    with pytest.raises(ValueError, match="unknown calibrator"):
        quantize_onnx(fp32, tmp_path / "x.onnx", reader, "kl")


def _fused_ops(path, tmp_path):
    """Op counts of the graph onnxruntime runs after its optimisations (QDQ groups fused)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"opt_{path.name}")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_compaction_keeps_values_fusions_and_shrinks(mbf, quick, tmp_path):
    _, _, tight, loose = mbf
    assert tight.stat().st_size < 0.8 * loose.stat().st_size
    x = np.stack([quick[1][i]["image"].numpy() for i in range(3)])
    np.testing.assert_array_equal(_run(tight, x), _run(loose, x))
    fused = _fused_ops(tight, tmp_path)
    assert fused == _fused_ops(loose, tmp_path) and fused["QLinearConv"] >= 20 and fused["QGemm"] == 1
    proto = onnx.load(str(tight))
    assert all(not n.name for n in proto.graph.node) and len(proto.graph.node) == len(onnx.load(str(loose)).graph.node)


@pytest.mark.slow
def test_quantize_command_writes_int8_report_and_card(tmp_path, mbf, quick, capsys):
    _, fp32, _, _ = mbf
    block = json.dumps(quick[0])
    args = ["quantize", str(fp32), "--data", block, "--out", str(tmp_path / "q"), "--calibration-images", "32"]
    args += ["--latency-repeats", "2"]
    code, _, err = _invoke(args, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "q" / "quantize.json").read_text())
    int8 = report["models"]["int8"]
    assert int8["size_ratio"] <= 0.35 and set(int8["latency"]) == {"1", "32"}
    assert report["quantize"]["calibrator"] == "minmax" and report["quantize"]["data"] == quick[0]
    synth = int8["eval"]["synthfaces"]
    assert [t["far"] for t in synth["tar_at_far"]] == [1e-2, 1e-3, 1e-4] and set(synth["groups"]) == {
        "0",
        "1",
        "2",
        "3",
    }
    assert report["models"]["fp32"]["eval"]["synthfaces"]["n_genuine"] == synth["n_genuine"] > 0
    card = (tmp_path / "q" / "card.md").read_text()
    for needle in ("| int8 | ", "TAR@1e-3", "TAR per group", "group 3", "FLOPs", "parameters", "facekd quantize"):
        assert needle in card, needle
    assert "n/a, fp32 weights" in card and "(Conv/Gemm/MatMul of the fp32 graph)" in card


def test_quantize_command_rejects_bad_input(tmp_path, quick, capsys):
    code, _, err = _invoke(["quantize", str(tmp_path / "none.onnx"), "--data", json.dumps(quick[0])], capsys)
    assert code == 2 and err.startswith("error: ") and "none.onnx: no such ONNX file" in err
    code, _, err = _invoke(["quantize", str(tmp_path / "run"), "--data", json.dumps(quick[0])], capsys)
    assert code == 2 and "--arch" in err
    code, _, err = _invoke(["quantize", "x.onnx", "--data", "{kind: synthfaces, preset: huge}"], capsys)
    assert code == 2 and "preset" in err


@pytest.mark.slow
def test_export_writes_card_with_provenance(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save(_trained_like("mbf_tiny", embedding_size=128).state_dict(), run / "backbone.pth")
    (run / "config.yaml").write_text(
        "teacher: {checkpoint: t/backbone.pth, arch: iresnet_tiny}\ndata: {kind: synthfaces, preset: quick}\n"
    )
    out = tmp_path / "exp" / "student.onnx"
    args = ["export", str(run), "--arch", "mbf_tiny", "--out", str(out), "--latency-repeats", "2"]
    code, _, err = _invoke(args, capsys)
    assert code == 0, err
    card = (tmp_path / "exp" / "card.md").read_text()
    assert "iresnet_tiny" in card and "not evaluated" in card and "torch.utils.flop_counter" in card
    assert "facekd export" in card and "| fp32 | `student.onnx` |" in card
