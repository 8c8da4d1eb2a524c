"""Quantization-aware distillation: fake quantization where the INT8 graph quantizes, the float
weights back, a QAT run that resumes to the same weights, and `run_qat` end to end (PAD
weighting) with its INT8 export, report and model card."""

import json
from collections import Counter

import onnx
import pytest
import torch
from onnx import numpy_helper

from facekd.models import get_model
from facekd.models.checkpoint import load_backbone
from facekd.onnx import export_onnx
from facekd.quant.calibration import DatasetCalibrationReader, load_dataset
from facekd.quant.fake_quant import float_state_dict, freeze_bn_statistics, prepare_qat, quantization_points
from facekd.quant.ptq import quantize_onnx
from facekd.quant.qat import QATConfig, build_qat_task, load_qat_config, run_qat
from facekd.train import train
from facekd.utils import seed_everything

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    block = {"kind": "synthfaces", "preset": "quick", "cache_dir": str(tmp_path_factory.mktemp("synth"))}
    return block, load_dataset(block)


@pytest.mark.parametrize("arch", ["mbf_tiny", "iresnet_mini"])
def test_fake_quant_points_are_the_int8_graph_quantized_tensors(tmp_path, quick, arch):
    """Every tensor onnxruntime quantizes (but the graph input and a Flatten, which keeps its input's
    scale) is the output of exactly one module that `prepare_qat` fake-quantizes."""
    torch.manual_seed(0)
    model = get_model(arch, embedding_size=64).eval()
    points = quantization_points(model, (32, 32))
    int8 = quantize_onnx(
        export_onnx(model, tmp_path / "m.onnx"), tmp_path / "q.onnx", DatasetCalibrationReader(quick[1], 8)
    )
    graph = onnx.load(str(int8)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    quantized = Counter(producer.get(n.input[0], "input") for n in graph.node if n.op_type == "QuantizeLinear")
    assert quantized["input"] == 1
    assert len(points) == sum(quantized.values()) - quantized["input"] - quantized["Flatten"]


def test_prepare_qat_quantizes_weights_per_channel_and_strips_back(quick):
    torch.manual_seed(0)
    model = get_model("mbf_tiny", embedding_size=64)
    keys = set(model.state_dict())
    prepare_qat(model.train(), (32, 32))
    out = model(torch.stack([quick[1][i]["image"] for i in range(4)]))
    assert out.shape == (4, 64)
    conv = model.get_submodule("layers.2.layers.1.layers.0")  # a depthwise 3×3
    w = conv.weight.detach()
    scale = w.abs().amax(dim=(1, 2, 3)) / 127  # symmetric, per output channel, [-127, 127]
    expected = torch.round(w / scale[:, None, None, None]).clamp(-127, 127) * scale[:, None, None, None]
    torch.testing.assert_close(conv.weight_fake_quant(w), expected, atol=1e-6, rtol=1e-5)
    fq = model.get_submodule("layers.0.layers.2.activation_fake_quant")  # the first PReLU's output
    assert fq.scale.numel() == 1 and fq.scale.item() > 0
    state = float_state_dict(model.state_dict())
    assert set(state) == keys
    get_model("mbf_tiny", embedding_size=64).load_state_dict(state, strict=True)
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(model, (32, 32))


def test_freeze_bn_statistics_keeps_running_statistics_and_trains_affine():
    torch.manual_seed(0)
    model = get_model("mbf_tiny", embedding_size=64)
    keys = list(model.state_dict())
    assert freeze_bn_statistics(model) == sum(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    model.train()
    bn = model.get_submodule("layers.0.layers.1")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(4, 3, 32, 32)).pow(2).mean().backward()
    assert not bn.training and bn.weight.grad is not None and list(model.state_dict()) == keys
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    eval_out = model.eval()(torch.ones(2, 3, 32, 32))
    torch.testing.assert_close(model.train()(torch.ones(2, 3, 32, 32)), eval_out)  # the deployed arithmetic


def _config(tmp_path, **over):
    torch.manual_seed(1)
    torch.save(get_model("mbf_tiny", embedding_size=64).state_dict(), tmp_path / "student.pth")
    torch.save(get_model("iresnet_mini", embedding_size=64).state_dict(), tmp_path / "teacher.pth")
    raw = {
        "student": {"checkpoint": str(tmp_path / "student.pth"), "arch": "mbf_tiny"},
        "teacher": {"checkpoint": str(tmp_path / "teacher.pth"), "arch": "iresnet_mini", "online": True},
        "data": {"kind": "synthfaces", "preset": "quick", "synthfaces": {"num_train_identities": 12}},
        "train": {"epochs": 1, "batch_size": 32},
        "run_dir": str(tmp_path / "run"),
        **over,
    }
    return QATConfig.model_validate(raw)


class _Interrupt(Exception):
    pass


class _StopAfter(torch.utils.data.Dataset):
    """The dataset, but reading item `limit` raises (a run killed mid-epoch)."""

    def __init__(self, dataset, limit):
        self.dataset, self.limit, self.reads = dataset, limit, 0

    def __getattr__(self, name):  # image_size, labels, augmentation, ... of the wrapped dataset
        return getattr(self.__dict__["dataset"], name)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.limit:
            raise _Interrupt
        return self.dataset[i]

    def fingerprint(self):
        return self.dataset.fingerprint()


def _qat_train(cfg, dataset, run_dir):
    seed_everything(cfg.train.seed)
    task, _ = build_qat_task(cfg, load_dataset(cfg.data.model_dump()))
    return train(task, dataset, cfg.train, run_dir, progress=False)


@pytest.mark.slow
def test_qat_run_resumes_to_identical_weights_and_observers(tmp_path):
    cfg = _config(tmp_path, distill={"loss": "l2", "weighting": "pad"})
    cfg.train = cfg.train.model_copy(update={"checkpoint_every": 1})
    ds = load_dataset(cfg.data.model_dump())
    assert len(ds) // 32 >= 3  # steps in the epoch
    whole = _qat_train(cfg, ds, tmp_path / "whole")
    with pytest.raises(_Interrupt):
        _qat_train(cfg, _StopAfter(ds, limit=32 * 2 + 7), tmp_path / "killed")
    assert torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    resumed = _qat_train(cfg, ds, tmp_path / "killed")
    expected = whole.state_dict()
    assert any("activation_fake_quant.scale" in k for k in expected)
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v.float(), expected[k].float(), atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.slow
def test_run_qat_exports_int8_report_and_card(tmp_path):
    cfg = _config(
        tmp_path,
        distill={"loss": "l2", "weighting": "pad", "lambda": 2.0},
        train={"epochs": 1, "batch_size": 32},
        quantize={"calibration_images": 32},
        eval={"latency_repeats": 2},
    )
    report = run_qat(cfg, progress=False, command="facekd qat test.yaml")
    deploy = tmp_path / "run" / "deploy"
    names = ["fp32", "int8 PTQ", "fp32 after QAT", "int8 QAT", "int8 QAT, learned ranges"]
    assert list(report["models"]) == names  # "int8 QAT": calibrated ranges, the default
    assert report["models"]["int8 QAT"]["path"] == str(deploy / "qat_int8.onnx")
    assert json.loads((deploy / "report.json").read_text())["baseline"] == "fp32"
    ranges = report["quantize"]["qat_learned_ranges"]
    assert ranges["matched"] == ranges["quantizers"] == 53 + 1  # mbf_tiny's points and its input
    # the learned-ranges graph quantizes its input with the range the input's quantizer learned
    task = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["task"]
    lo, hi = (float(task[f"student.input_fake_quant.activation_post_process.{k}"]) for k in ("min_val", "max_val"))
    graph = onnx.load(str(deploy / "qat_int8_learned_ranges.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    q_in = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "data")
    assert float(inits[q_in.input[1]]) == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-5)
    for name in ("int8 PTQ", "int8 QAT", "int8 QAT, learned ranges"):
        m = report["models"][name]
        assert m["size_ratio"] < 0.45 and m["checks"]["ok"] and "synthfaces" in m["eval"]
    student = load_backbone(tmp_path / "run" / "student_qat.pth", "mbf_tiny")  # strict: the backbone's own keys
    assert student.embedding_size == 64
    card = (deploy / "card.md").read_text()
    for needle in ("int8 QAT", "int8 PTQ", "fp32 after QAT", "TAR per group", "iresnet_mini", '"pad"', "facekd qat"):
        assert needle in card, needle
    assert (tmp_path / "run" / "done").exists() and (tmp_path / "run" / "config.yaml").exists()


def test_qat_config_overrides_and_errors(tmp_path):
    cfg = _config(tmp_path)
    path = tmp_path / "qat.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json", by_alias=True)))
    loaded = load_qat_config(path, ["train.lr=0.002", "quantize.calibrator=percentile"])
    assert loaded.train.lr == 0.002 and loaded.train.epochs == 1 and loaded.quantize.calibrator == "percentile"
    fresh = QATConfig.model_validate({**cfg.model_dump(mode="json", by_alias=True), "train": {"seed": 3}})
    assert (fresh.train.epochs, fresh.train.lr, fresh.train.warmup_epochs) == (2, 0.01, 0.0)  # fine-tune defaults
    with pytest.raises(ValueError, match=r"qat.yaml: quantize.calibrator"):
        load_qat_config(path, ["quantize.calibrator=kl"])
    with pytest.raises(ValueError, match="unknown key"):
        load_qat_config(path, ["train.lrr=1"])
    hkd = _config(tmp_path, distill={"loss": "hkd"})
    with pytest.raises(ValueError, match="'hkd' reads class logits"):
        build_qat_task(hkd, load_dataset(hkd.data.model_dump()))
