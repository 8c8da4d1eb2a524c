"""The builder and run_training: teacher width from its checkpoint, teacher heads for logit losses,
head.pth, the run record that protects a run directory, --no-resume, hflip on RecordIO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from facekd.build import RUN_RECORD, build_dataset, build_run, run_training
from facekd.config import RunConfig
from facekd.models import get_model
from facekd.store import RecordMismatch

ROOT = Path(__file__).resolve().parent.parent


def _arrays(tmp_path, n=48, classes=4, size=16):
    g = np.random.default_rng(0)
    labels = np.arange(n) % classes
    base = g.integers(0, 255, size=(classes, size, size, 3))
    images = np.clip(base[labels] + g.integers(-20, 20, size=(n, size, size, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    return tmp_path / "data.npz"


def _cfg(tmp_path, name, **blocks) -> RunConfig:
    base = {
        "data": {"kind": "arrays", "path": str(tmp_path / "data.npz")},
        "model": {"arch": "mbf_tiny", "embedding_size": 16},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "run_dir": str(tmp_path / name),
    }
    return RunConfig.model_validate({**base, **blocks})


def _teacher_checkpoint(tmp_path, dim=64) -> Path:
    torch.manual_seed(7)
    path = tmp_path / f"teacher{dim}.pth"
    torch.save(get_model("mbf_tiny", embedding_size=dim, input_size=16).state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("online", [False, True])
def test_teacher_width_is_read_from_its_checkpoint(tmp_path, online):
    _arrays(tmp_path)
    ckpt = _teacher_checkpoint(tmp_path, dim=64)
    cfg = _cfg(
        tmp_path,
        "kd",
        distill={"loss": "l2"},
        teacher={"checkpoint": str(ckpt), "arch": "mbf_tiny", "online": online},
    )
    run = build_run(cfg)
    assert run.task.distiller.projection.out_features == 64  # a 16-d student projected to the 64-d teacher
    if not online:
        assert run.teacher.cache.embeddings.shape == (48, 64)


@pytest.mark.slow
def test_teacher_head_gives_an_online_teacher_its_logits(tmp_path):
    _arrays(tmp_path)
    teacher_cfg = _cfg(tmp_path, "teacher", model={"arch": "mbf_tiny", "embedding_size": 32})
    teacher = run_training(teacher_cfg, progress=False)
    head_file = tmp_path / "teacher" / "head.pth"
    assert torch.equal(torch.load(head_file, weights_only=True)["weight"], teacher.head.weight.detach())
    student_cfg = _cfg(
        tmp_path,
        "hkd",
        distill={"loss": "hkd"},
        teacher={
            "checkpoint": str(tmp_path / "teacher" / "backbone.pth"),
            "arch": "mbf_tiny",
            "head": str(head_file),
            "online": True,
        },
    )
    task = run_training(student_cfg, progress=False)
    t_head = task.teacher.head
    assert t_head is not None and torch.equal(t_head.weight, teacher.head.weight.detach().to(t_head.weight.device))
    logs = [json.loads(x) for x in (tmp_path / "hkd" / "metrics.jsonl").read_text().splitlines()]
    assert "distill" in logs[-1]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ekd", "adadistill", "margin_distillation", "gkd"])
def test_face_baselines_train_from_a_run_config(tmp_path, loss):
    """The builder hands the losses that read labels, the class count and the teacher's class
    centres what they need: each face-specific baseline trains from its config block alone."""
    _arrays(tmp_path)
    teacher = run_training(_cfg(tmp_path, "teacher", model={"arch": "mbf_tiny", "embedding_size": 16}), progress=False)
    blocks: dict = {
        "distill": {"loss": loss},
        "teacher": {
            "checkpoint": str(tmp_path / "teacher" / "backbone.pth"),
            "arch": "mbf_tiny",
            "head": str(tmp_path / "teacher" / "head.pth"),
            "online": True,
        },
    }
    if loss in ("adadistill", "margin_distillation"):
        blocks["head"] = None  # these losses are the margin head
    task = run_training(_cfg(tmp_path, loss, **blocks), progress=False)
    if loss == "margin_distillation":
        assert torch.equal(task.distiller.loss.centres.cpu(), teacher.head.weight.detach().cpu())
    logs = [json.loads(x) for x in (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(logs[-1]["distill"])


def test_teacher_head_of_the_wrong_width_is_one_clear_line(tmp_path):
    _arrays(tmp_path)
    ckpt = _teacher_checkpoint(tmp_path, dim=64)
    torch.save({"weight": torch.zeros(4, 32)}, tmp_path / "head.pth")
    cfg = _cfg(
        tmp_path,
        "hkd",
        distill={"loss": "hkd"},
        teacher={"checkpoint": str(ckpt), "arch": "mbf_tiny", "head": str(tmp_path / "head.pth"), "online": True},
    )
    with pytest.raises(ValueError, match=r"head\.pth: expected a 'weight' of shape \(num_classes, 64\).*\(4, 32\)"):
        build_run(cfg)


@pytest.mark.slow
def test_a_refused_run_leaves_the_run_directory_untouched(tmp_path):
    _arrays(tmp_path)
    run_training(_cfg(tmp_path, "run"), progress=False)
    run = tmp_path / "run"
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for change in ({"head": {"s": 32.0}}, {"train": {"epochs": 1, "batch_size": 16, "lr": 0.2}}):
        with pytest.raises(RecordMismatch, match=r"holds a different result \(config\.(head\.s|train\.lr): saved"):
            run_training(_cfg(tmp_path, "run", **change), progress=False)
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    # settings that may change between a run and its resume are not differences
    again = _cfg(tmp_path, "run", train={"epochs": 1, "batch_size": 16, "lr": 0.05, "log_every": 3})
    run_training(again, progress=False)
    assert json.loads((run / RUN_RECORD).read_text())["key"] == json.loads(files[run / RUN_RECORD])["key"]


@pytest.mark.slow
def test_no_resume_invalidates_done_before_anything_else(tmp_path):
    _arrays(tmp_path)
    run_training(_cfg(tmp_path, "run"), progress=False)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    retrain = _cfg(
        tmp_path,
        "run",
        distill={"loss": "l2"},
        teacher={"checkpoint": str(tmp_path / "broken.pth"), "arch": "mbf_tiny"},
    )
    with pytest.raises(ValueError, match="broken.pth"):
        run_training(retrain, resume=False, progress=False)  # dies while building the teacher
    run = tmp_path / "run"
    assert not (run / "done").exists() and not (run / "backbone.pth").exists()
    assert not (run / "checkpoints" / "last.pt").exists()


def _write_recordio(tmp_path, n=32, classes=4, size=16) -> Path:
    from facekd.data.recordio import write_recordio

    g = np.random.default_rng(1)
    # left-right asymmetric images, so that a flip changes every embedding
    ramp = np.linspace(0, 200, size, dtype=np.float64)[None, :, None]
    labels = np.sort(np.arange(n) % classes)
    images = [
        np.clip(ramp + 40 * label + g.integers(0, 30, (size, size, 3)), 0, 255).astype(np.uint8) for label in labels
    ]
    write_recordio(zip(images, labels), tmp_path / "rec/")
    return tmp_path / "rec"


def _hflip_recordio_config(tmp_path) -> dict:
    rec = _write_recordio(tmp_path)
    return {
        "data": {"kind": "recordio", "path": str(rec), "hflip": True},
        "model": {"arch": "mbf_tiny", "embedding_size": 16},
        "distill": {"loss": "l2"},
        "teacher": {"checkpoint": str(_teacher_checkpoint(tmp_path, dim=64)), "arch": "mbf_tiny"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "run_dir": str(tmp_path / "run"),
    }


@pytest.mark.slow
def test_teacher_cache_is_embedded_from_the_unflipped_images(tmp_path):
    from facekd.embed import embed_dataset
    from facekd.models.checkpoint import load_backbone

    raw = _hflip_recordio_config(tmp_path)
    run = build_run(RunConfig.model_validate(raw))
    assert run.dataset.augmentation, "the training set itself is augmented"
    plain = build_dataset(RunConfig.model_validate({**raw, "data": {**raw["data"], "hflip": False}}).data)
    ref = embed_dataset(
        load_backbone(raw["teacher"]["checkpoint"], "mbf_tiny"), plain, tmp_path / "ref", progress=False
    )
    np.testing.assert_allclose(run.teacher.cache.embeddings, ref.embeddings, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_hflip_recordio_run_is_reused_by_a_second_process(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_hflip_recordio_config(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for attempt in range(2):  # the second process must find the finished run and reuse it
        res = subprocess.run(
            [sys.executable, "-m", "facekd.cli", "train", str(config), "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"attempt {attempt}: {res.stderr[-2000:]}"
        assert res.stdout.strip().startswith("done:")


@pytest.mark.slow
def test_model_init_starts_from_a_checkpoint_recorded_by_content(tmp_path):
    """`model.init`: the network starts from the checkpoint's weights (fine-tuning); the run record
    holds the file's content, so a moved copy is the same run and other weights are another."""
    from facekd.build import run_record

    _arrays(tmp_path)
    ckpt = _teacher_checkpoint(tmp_path, dim=16)
    run = build_run(_cfg(tmp_path, "ft", model={"arch": "mbf_tiny", "embedding_size": 16, "init": str(ckpt)}))
    saved = torch.load(ckpt, weights_only=True)
    own = run.task.student.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())
    assert run.task.student.training  # trained from there, not left in eval mode

    def record(path):
        cfg = _cfg(tmp_path, "ft", model={"arch": "mbf_tiny", "embedding_size": 16, "init": str(path)})
        return run_record(cfg, run.dataset, None, None)

    moved = tmp_path / "moved.pth"
    moved.write_bytes(ckpt.read_bytes())
    assert record(moved) == record(ckpt)
    other = _teacher_checkpoint(tmp_path, dim=16)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in saved.items()}, other)
    assert record(other) != record(moved)
    with pytest.raises(ValueError, match="init: .* does not exist"):
        _cfg(tmp_path, "ft", model={"arch": "mbf_tiny", "init": str(tmp_path / "none.pth")})
