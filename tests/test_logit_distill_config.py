"""`distill: {loss: hkd}` from YAML alone, for a classification and a face student, with the
teacher's head read from the head.pth its run saved; errors name config keys, not classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from facekd.build import build_run
from facekd.cli import app
from facekd.config import load_config
from facekd.losses.distill.hkd import hkd_loss
from facekd.tasks import ClassifierTeacher


def _invoke(args, capsys):
    with pytest.raises(SystemExit) as info:
        app([str(a) for a in args], prog_name="facekd")
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.fixture
def data(tmp_path):
    torch.set_num_threads(1)
    g = np.random.default_rng(0)
    labels = np.arange(48) % 4
    base = g.integers(0, 255, size=(4, 16, 16, 3))
    images = np.clip(base[labels] + g.integers(-20, 20, size=(48, 16, 16, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    return tmp_path / "data.npz"


def _yaml(tmp_path, name, task, **blocks):
    raw = {
        "task": task,
        "data": {"kind": "arrays", "path": str(tmp_path / "data.npz")},
        "model": {"arch": "small_cnn", "embedding_size": 8, "options": {"width": 4}},
        "head": {"name": "softmax" if task == "classification" else "arcface"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "run_dir": str(tmp_path / name),
        **blocks,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _teacher_block(tmp_path, head=True, online=True):
    block = {"checkpoint": str(tmp_path / "teacher" / "backbone.pth"), "arch": "small_cnn", "online": online}
    if head:
        block["head"] = str(tmp_path / "teacher" / "head.pth")
    return block


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "face"])
def test_hkd_trains_from_yaml_with_the_teachers_head(tmp_path, data, capsys, task):
    teacher = _yaml(tmp_path, "teacher", task, model={"arch": "small_cnn", "embedding_size": 16})
    assert _invoke(["train", teacher, "--no-progress"], capsys)[0] == 0
    student = _yaml(
        tmp_path, "hkd", task, distill={"loss": "hkd", "lambda": 2.0, "options": {"temperature": 3.0}},
        teacher=_teacher_block(tmp_path),
    )  # fmt: skip
    code, out, err = _invoke(["train", student, "--no-progress"], capsys)
    assert code == 0, err
    logs = [json.loads(x) for x in (tmp_path / "hkd" / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(logs[-1]["distill"]) and "train (last epoch" in out
    if task != "classification":
        return
    # the distillation term is λ · mean T²·KL(teacher ‖ student) of the two Linear classifiers' logits
    run = build_run(load_config(student))
    assert isinstance(run.task.teacher, ClassifierTeacher)
    head = torch.load(tmp_path / "teacher" / "head.pth", weights_only=True)
    assert torch.equal(run.task.teacher.head.weight, head["weight"])
    batch = {k: torch.stack([run.dataset[i][k] for i in range(8)]) for k in ("image", "label", "index")}
    run.task.eval()
    _, got = run.task(batch, 0)
    with torch.no_grad():
        s = run.task.head(run.task.student(batch["image"]))
        t = run.task.teacher.head(run.task.teacher.model(batch["image"]))
    assert got["distill"] == pytest.approx(2.0 * float(hkd_loss(s, t, 3.0).mean()), rel=1e-5)


@pytest.mark.parametrize(
    "teacher,expect",
    [
        ("cache", "teacher.cache holds embeddings only"),
        ("no_head", "give the teacher block its head (teacher: {checkpoint, arch, head: <teacher run>/head.pth"),
    ],
)
@pytest.mark.slow
def test_hkd_without_teacher_logits_is_one_line_in_config_terms(tmp_path, data, capsys, teacher, expect):
    assert _invoke(["train", _yaml(tmp_path, "teacher", "classification"), "--no-progress"], capsys)[0] == 0
    if teacher == "cache":
        args = ["embed", "--arch", "small_cnn", "--checkpoint", tmp_path / "teacher", "--kind", "arrays"]
        assert _invoke([*args, "--data", data, "--out", tmp_path / "cache", "--no-progress"], capsys)[0] == 0
        block = {"cache": str(tmp_path / "cache")}
    else:
        block = _teacher_block(tmp_path, head=False)
    student = _yaml(tmp_path, "hkd", "classification", distill={"loss": "hkd"}, teacher=block)
    code, _, err = _invoke(["train", student, "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and expect in err, err
    assert "distill.loss" in err and "Teacher(" not in err and "Task" not in err
