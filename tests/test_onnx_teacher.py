"""Model-zoo ONNX teachers everywhere: `teacher: {onnx: …}` in run configs (cached and online),
`--onnx` in `facekd embed`, `eval --bin` and `eval-ijb`, model-zoo graph layouts (input `input.1`,
a fixed batch of 1, in-graph normalisation), the execution provider, and the run identity (the
file's content hash)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from facekd.build import build_run, load_network, run_training
from facekd.cli import app
from facekd.config import ConfigError, RunConfig, load_config
from facekd.data.binset import write_bin
from facekd.embed import EmbeddingCache
from facekd.models import get_model
from facekd.onnx import OnnxTeacher, export_onnx
from facekd.onnx import teacher as onnx_teacher

SIZE = 16


def _arrays(tmp_path, n=48, classes=4):
    g = np.random.default_rng(0)
    labels = np.arange(n) % classes
    base = g.integers(0, 255, size=(classes, SIZE, SIZE, 3))
    images = np.clip(base[labels] + g.integers(-20, 20, size=(n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    return images, labels


def _teacher(tmp_path, dim=64, seed=7, pixel_input=False, name="teacher"):
    """A 64-d mbf_tiny with non-trivial BatchNorm statistics, as backbone.pth and as ONNX."""
    torch.manual_seed(seed)
    model = get_model("mbf_tiny", embedding_size=dim, input_size=SIZE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    ckpt = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), ckpt)
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=SIZE, pixel_input=pixel_input)
    return model, ckpt, path


def _cfg(tmp_path, name, teacher, **blocks) -> RunConfig:
    base = {
        "data": {"kind": "arrays", "path": str(tmp_path / "data.npz")},
        "model": {"arch": "mbf_tiny", "embedding_size": 16},
        "distill": {"loss": "l2"},
        "teacher": teacher,
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "run_dir": str(tmp_path / name),
    }
    return RunConfig.model_validate({**base, **blocks})


def _zoo_layout(src, dst, input_name="input.1", batch=1):
    """Rewrite an exported graph the way some model-zoo files are: another input name, fixed batch."""
    proto = onnx.load(str(src))
    old = proto.graph.input[0].name
    proto.graph.input[0].name = input_name
    for node in proto.graph.node:
        node.input[:] = [input_name if i == old else i for i in node.input]
    for vi in (proto.graph.input[0], proto.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.slow
def test_onnx_teacher_cache_matches_the_pytorch_teacher(tmp_path):
    _arrays(tmp_path)
    _, ckpt, path = _teacher(tmp_path)
    torch_run = build_run(_cfg(tmp_path, "pt", {"checkpoint": str(ckpt), "arch": "mbf_tiny"}))
    onnx_run = build_run(_cfg(tmp_path, "onnx", {"onnx": str(path)}))
    assert onnx_run.task.distiller.projection.out_features == 64  # the width read from the graph
    a, b = torch_run.teacher.cache.embeddings, onnx_run.teacher.cache.embeddings
    assert a.shape == b.shape == (48, 64)
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-5)  # float rounding of two runtimes
    # the cache (and so the run) is identified by the file's content hash
    assert onnx_run.teacher.cache.meta["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_kd_from_an_onnx_teacher_trains_and_is_reused(tmp_path):
    _arrays(tmp_path)
    _, _, path = _teacher(tmp_path)
    cfg = _cfg(tmp_path, "kd", {"onnx": str(path)})
    run_training(cfg, progress=False)
    logs = [json.loads(x) for x in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(logs[-1]["distill"]) and (tmp_path / "kd" / "done").exists()
    record = json.loads((tmp_path / "kd" / "run.json").read_text())
    # the same graph under another name is the same teacher: the finished run is reused
    copy = tmp_path / "elsewhere" / "zoo.onnx"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    run_training(_cfg(tmp_path, "kd", {"onnx": str(copy)}), progress=False)
    assert json.loads((tmp_path / "kd" / "run.json").read_text())["key"] == record["key"]
    # another graph is another teacher: refused in the same run directory
    _, _, other = _teacher(tmp_path, seed=8, name="other")
    with pytest.raises(ValueError, match="holds a different result"):
        run_training(_cfg(tmp_path, "kd", {"onnx": str(other)}), progress=False)


@pytest.mark.slow
def test_online_onnx_teacher_runs_on_the_batch(tmp_path):
    images, _ = _arrays(tmp_path)
    model, _, path = _teacher(tmp_path)
    run = build_run(_cfg(tmp_path, "online", {"onnx": str(path), "online": True}))
    assert run.teacher.cache is None and run.teacher.identity["model_sha256"] == OnnxTeacher(path).sha256
    x = torch.from_numpy(images[:5]).permute(0, 3, 1, 2).float() / 127.5 - 1
    got = run.task.teacher({"image": x, "label": torch.zeros(5, dtype=torch.long)}).embedding
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), atol=2e-5, rtol=0)


@pytest.mark.slow
def test_model_zoo_layouts_input_name_fixed_batch_in_graph_norm(tmp_path):
    model, _, _ = _teacher(tmp_path)
    x = torch.rand(5, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        ref = model(x)
    for pixel in (False, True):
        exported = export_onnx(model, tmp_path / f"p{pixel}.onnx", input_size=SIZE, pixel_input=pixel)
        zoo = _zoo_layout(exported, tmp_path / f"zoo{pixel}.onnx")
        teacher = OnnxTeacher(zoo)
        assert teacher.input_name == "input.1" and teacher.fixed_batch == 1
        assert (teacher.mean, teacher.std) == ((0.0, 1.0) if pixel else (127.5, 127.5))
        assert teacher.input_size == (SIZE, SIZE) and teacher.embedding_size == 64
        torch.testing.assert_close(teacher(x), ref, atol=2e-5, rtol=0)  # 5 rows in chunks of 1
    with pytest.raises(ValueError, match=r"expected input \(B, 3, 16, 16\), got \(2, 3, 8, 8\)"):
        teacher(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="feature maps are not available"):
        teacher(x, return_features=True)


def test_execution_provider_follows_the_device(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_teacher.onnx_providers("auto") == ["CPUExecutionProvider"]
    with pytest.warns(UserWarning, match="no CUDAExecutionProvider"):
        assert onnx_teacher.onnx_providers("cuda:0") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_teacher.onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert onnx_teacher.onnx_providers("cuda:1") == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert onnx_teacher.onnx_providers("auto")[0] == ("CUDAExecutionProvider", {"device_id": 3})


@pytest.mark.slow
def test_teacher_block_errors_are_one_line(tmp_path):
    _arrays(tmp_path)
    _, ckpt, path = _teacher(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {{kind: arrays, path: {tmp_path / 'data.npz'}}}\nrun_dir: {tmp_path / 'r'}\n")
    bad = {
        f"teacher.onnx={path}": None,  # fine
        f"teacher.onnx={path} teacher.arch=r50": "architecture and the width come from the graph",
        f"teacher.onnx={path} teacher.checkpoint={ckpt}": "exactly one of cache, checkpoint or onnx",
        f"teacher.onnx={tmp_path / 'missing.onnx'}": "teacher onnx .*missing.onnx does not exist",
    }
    for overrides, message in bad.items():
        if message is None:
            assert load_config(cfg, overrides.split()).teacher.onnx == path
        else:
            with pytest.raises(ConfigError, match=message):
                load_config(cfg, overrides.split())
    fitnet = _cfg(tmp_path, "fitnet", {"onnx": str(path), "online": True}, distill={"loss": "fitnet"})
    with pytest.raises(ValueError, match="feature maps are not available from an ONNX graph"):
        build_run(fitnet)
    with pytest.raises(ValueError, match="brings its own architecture"):
        load_network("mbf_tiny", onnx=path)


def _facekd(args, capsys):
    with pytest.raises(SystemExit) as info:
        app([str(a) for a in args], prog_name="facekd")
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.mark.slow
def test_cli_embed_and_eval_take_onnx_like_a_checkpoint(tmp_path, capsys):
    images, labels = _arrays(tmp_path)
    _, ckpt, path = _teacher(tmp_path)
    zoo = _zoo_layout(path, tmp_path / "zoo.onnx")
    caches = {}
    for name, source in {"pt": ["--arch", "mbf_tiny", "--checkpoint", ckpt], "onnx": ["--onnx", zoo]}.items():
        data = ["--kind", "arrays", "--data", tmp_path / "data.npz"]
        code, _, err = _facekd(["embed", *source, *data, "--out", tmp_path / name, "--no-progress"], capsys)
        assert code == 0, err
        caches[name] = EmbeddingCache.open(tmp_path / name)
    np.testing.assert_allclose(caches["onnx"].embeddings, caches["pt"].embeddings, atol=2e-5, rtol=0)
    # the width (and input size) of a 64-d checkpoint is read from it by embed, eval and export alike
    assert caches["pt"].embeddings.shape[1] == 64
    code, _, err = _facekd(["export", ckpt, "--arch", "mbf_tiny", "--out", tmp_path / "again.onnx"], capsys)
    assert code == 0, err
    again = OnnxTeacher(tmp_path / "again.onnx")
    assert again.embedding_size == 64 and again.input_size == (SIZE, SIZE)
    # a .bin set at the teacher's input size: the same accuracy and XNorm lines
    pairs = [(i, j) for i in range(0, 48, 4) for j in (i + 1, i + 2)]  # 24 pairs, half genuine
    pair_images = np.stack([images[[a, b]] for a, b in pairs]).reshape(-1, SIZE, SIZE, 3)
    issame = np.array([labels[a] == labels[b] for a, b in pairs])
    write_bin(pair_images, issame, tmp_path / "tiny.bin", quality=100)
    lines = {}
    for name, source in {"pt": ["--arch", "mbf_tiny", "--checkpoint", ckpt], "onnx": ["--onnx", zoo]}.items():
        code, out, err = _facekd(["eval", *source, "--bin", tmp_path / "tiny.bin", "--device", "cpu"], capsys)
        assert code == 0, err
        lines[name] = out.splitlines()
    assert lines["onnx"][1:] == lines["pt"][1:] and lines["onnx"][0].startswith("[tiny][0]XNorm: ")
    code, _, err = _facekd(["eval", "--onnx", zoo, "--arch", "mbf_tiny", "--bin", tmp_path / "tiny.bin"], capsys)
    assert code == 2 and "brings its own architecture" in err
    code, _, err = _facekd(["eval", "--bin", tmp_path / "tiny.bin"], capsys)
    assert code == 2 and "give --arch (with --checkpoint), or --onnx" in err
