"""YAML run configs: validation errors are one line naming file and key; overrides; a run from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from facekd.build import run_training
from facekd.config import ConfigError, RunConfig, apply_overrides, dump_config, load_config, save_config


def _write(tmp_path, obj, name="run.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(obj) if not isinstance(obj, str) else obj)
    return p


def test_defaults_and_typed_overrides(tmp_path):
    p = _write(tmp_path, {"model": {"arch": "mbf_tiny", "embedding_size": 64}, "train": {"epochs": 3}})
    cfg = load_config(p, ["train.lr=0.05", "train.amp=true", "head.m=28.6479deg", "train.milestones=[1, 2]"])
    assert cfg.train.lr == 0.05 and cfg.train.amp is True and cfg.train.epochs == 3
    assert cfg.head.m == pytest.approx(0.5, abs=1e-5)
    assert cfg.train.milestones == [1.0, 2.0] and cfg.model.embedding_size == 64
    assert load_config(None, ["head=null", "distill.loss=l2", f"teacher.cache={tmp_path}"]).head is None


@pytest.mark.parametrize(
    "content,overrides,pattern",
    [
        ({"train": {"lrr": 0.1}}, [], r"run\.yaml: train\.lrr: unknown key"),
        ({"train": {"lr": "fast"}}, [], r"run\.yaml: train\.lr: .*number.*'fast'"),
        ({}, ["train.epochs=0"], r"train\.epochs: .*greater than or equal to 1"),
        (
            {"teacher": {"cache": "/no/such/cache"}, "distill": {"loss": "l2"}},
            [],
            r"teacher: .*/no/such/cache does not exist",
        ),
        ({"distill": {"loss": "l2", "lambda": 2}}, [], r"distill needs a teacher"),
        ({"data": {"kind": "folder"}}, [], r"data: kind folder needs a path"),
        ("train: [1, 2", [], r"run\.yaml: invalid YAML"),
        ({}, ["train.lr"], r"expected key=value"),
    ],
)
def test_errors_are_one_line_and_name_the_key(tmp_path, content, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(_write(tmp_path, content), overrides)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips_with_lambda_alias(tmp_path):
    cfg = load_config(None, ["distill.lambda=3.5", f"teacher.cache={tmp_path}", "train.epochs=2"])
    assert cfg.distill.lam == 3.5
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "lambda: 3.5" in text and dump_config(cfg) == text
    assert load_config(tmp_path / "config.yaml") == cfg


def test_apply_overrides_is_pure():
    raw = {"train": {"lr": 0.1}}
    out = apply_overrides(raw, ["train.lr=0.2", "model.arch=r18"])
    assert raw == {"train": {"lr": 0.1}} and out == {"train": {"lr": 0.2}, "model": {"arch": "r18"}}


def _arrays(tmp_path, n=48, classes=4, size=16):
    g = np.random.default_rng(0)
    labels = np.arange(n) % classes
    base = g.integers(0, 255, size=(classes, size, size, 3))
    images = np.clip(base[labels] + g.integers(-20, 20, size=(n, size, size, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, images=images, labels=labels)
    return path


@pytest.mark.slow
def test_run_training_from_config_with_cached_teacher(tmp_path):
    from facekd.build import build_dataset
    from facekd.embed import embed_dataset
    from facekd.models import get_model

    data = _arrays(tmp_path)
    base = {
        "data": {"kind": "arrays", "path": str(data)},
        "model": {"arch": "mbf_tiny", "embedding_size": 16},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
    }
    cfg = load_config(_write(tmp_path, {**base, "run_dir": str(tmp_path / "teacher")}), ["model.arch=iresnet_mini"])
    teacher_task = run_training(cfg, progress=False)
    assert (tmp_path / "teacher" / "config.yaml").exists() and (tmp_path / "teacher" / "backbone.pth").exists()
    cache = embed_dataset(teacher_task.student, build_dataset(cfg.data), tmp_path / "cache", progress=False)
    student_cfg = RunConfig.model_validate(
        {
            **base,
            "run_dir": str(tmp_path / "student"),
            "distill": {"loss": "l2", "lambda": 2.0},
            "teacher": {"cache": str(cache.directory)},
        }
    )
    task = run_training(student_cfg, progress=False)
    assert task.distiller.projection is None and task.distiller.lam == 2.0
    state = torch.load(tmp_path / "student" / "backbone.pth", weights_only=True)
    get_model("mbf_tiny", embedding_size=16, input_size=16).load_state_dict(state, strict=True)
