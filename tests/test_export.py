"""ONNX export: PyTorch ↔ onnxruntime parity, the MFR checker on good and bad graphs, OnnxTeacher, CLI."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

from facekd.models import get_model
from facekd.onnx import OnnxTeacher, check_onnx, detect_pixel_norm, export_onnx
from facekd.onnx.commands import register

torch.set_num_threads(1)


def _trained_like(name, **kw):
    """A model whose BN statistics / affine params are not the trivial init (outputs of order 1)."""
    torch.manual_seed(0)
    m = get_model(name, **kw)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


def _checks(report):
    return {c.name: c.passed for c in report.checks}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mbf_tiny", "iresnet_mini"])
def test_export_parity_and_format(tmp_path, name):
    model = _trained_like(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["data"] and len(proto.graph.output) == 1
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert all(numpy_helper.to_array(i).dtype.itemsize >= 4 for i in proto.graph.initializer)
    assert proto.opset_import[0].version == 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(None, {"data": x.numpy()})[0]
    assert np.abs(ref).mean() > 0.1  # a meaningful comparison
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert model.training is False


@pytest.mark.slow
def test_checker_passes_good_model(tmp_path):
    path = export_onnx(_trained_like("mbf_tiny"), tmp_path / "good.onnx")
    report = check_onnx(path, input_size=32, max_gflops=1.0)
    assert report.ok, str(report)
    assert report.info["feature_dim"] == 512 and report.info["input_std"] == 127.5
    assert 0.001 < report.info["gflops"] < 0.1
    assert not check_onnx(path).ok  # default crop size is 112×112
    assert "input size" in [c.name for c in check_onnx(path).checks if not c.passed]


def test_checker_directory_with_crop_and_pixel_norm(tmp_path):
    export_onnx(_trained_like("iresnet_mini"), tmp_path / "a.onnx")
    (tmp_path / "crop.txt").write_text("0\n0\n32\n32\n32\n32\n")
    (tmp_path / "pixel_norm.txt").write_text("127.5\n127.5\n")
    report = check_onnx(tmp_path)
    assert report.ok, str(report)
    assert report.info["normalisation"] == "pixel_norm.txt"


@pytest.mark.slow
def test_checker_feature_dim_by_track(tmp_path):
    path = export_onnx(_trained_like("iresnet_mini", embedding_size=1024), tmp_path / "wide.onnx")
    assert _checks(check_onnx(path, input_size=32))["feature dim ≤ 512 (ms1m)"] is False
    assert check_onnx(path, input_size=32, track="glint").ok


class _FlipSum(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        self.input_size = m.input_size

    def forward(self, x):
        return self.m(x) + self.m(torch.flip(x, dims=[3]))


@pytest.mark.slow
def test_checker_rejects_in_graph_flip(tmp_path):
    path = export_onnx(_FlipSum(_trained_like("mbf_tiny")), tmp_path / "flip.onnx")
    report = check_onnx(path, input_size=32)
    assert _checks(report)["no in-graph flip"] is False and not report.ok


def test_checker_rejects_fixed_batch_and_fp16(tmp_path):
    model = _trained_like("iresnet_mini")
    good = export_onnx(model, tmp_path / "g.onnx")
    proto = onnx.load(str(good))
    for vi in (proto.graph.input[0], proto.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 1  # a graph exported with a fixed batch of 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, str(fixed))
    checks = _checks(check_onnx(fixed, input_size=32))
    assert checks["dynamic batch"] is False and checks["runs on onnxruntime"] is True
    proto = onnx.load(str(good))
    proto.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float16), "half_weight"))
    onnx.save(proto, str(tmp_path / "half.onnx"))
    rep = check_onnx(tmp_path / "half.onnx", input_size=32)
    assert _checks(rep)["fp32 weights (no initializer < 4 bytes)"] is False and "half_weight" in str(rep)
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    assert _checks(check_onnx(tmp_path / "broken.onnx")) == {"loads": False}


@pytest.mark.slow
def test_onnx_teacher_with_and_without_in_graph_norm(tmp_path):
    model = _trained_like("mbf_tiny")
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = model(x)
    for pixel in (False, True):
        path = export_onnx(model, tmp_path / f"t{pixel}.onnx", pixel_input=pixel)
        assert detect_pixel_norm(onnx.load(str(path)).graph) is pixel
        teacher = OnnxTeacher(path)
        assert (teacher.mean, teacher.std) == ((0.0, 1.0) if pixel else (127.5, 127.5))
        torch.testing.assert_close(teacher(x), ref, atol=1e-4, rtol=1e-4)
        if pixel:
            assert _checks(check_onnx(path, input_size=32))["no NaN / inf"]
    with pytest.raises(ValueError, match="expected input"):
        teacher(torch.zeros(2, 3, 16, 16))


@pytest.mark.slow
def test_cli_export_and_check(tmp_path):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    ckpt = tmp_path / "backbone.pth"
    torch.save(_trained_like("iresnet_mini").state_dict(), ckpt)
    out = tmp_path / "student.onnx"
    res = runner.invoke(app, ["export", str(ckpt), "--arch", "iresnet_mini", "--out", str(out), "--check"])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and out.exists()
    res = runner.invoke(app, ["check-onnx", str(out)])  # 112×112 expected by default
    assert res.exit_code == 1 and "[FAIL] input size" in res.output
    res = runner.invoke(app, ["export", str(ckpt), "--out", str(out)])
    assert res.exit_code != 0 and "--arch is required" in res.output
