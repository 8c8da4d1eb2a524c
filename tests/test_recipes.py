"""Every recipe in configs/ loads and validates with its paths pointed at a small exported SynthFaces
set (RecordIO, and the same images as a re-ID folder and a class folder), and one of them trains.

Validation goes past the schema: the dataset is built, every architecture is a registered model,
every distillation block builds its Distiller (map losses probe real networks), the run directory is
named after the file, and the file opens with the paper it reproduces and the source of its
schedule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from facekd.build import build_dataset, run_training
from facekd.config import load_config
from facekd.losses.distiller import LOSSES, Distiller
from facekd.models import get_model, list_models
from facekd.refo.commands import load_refo_file
from facekd.synthfaces import SynthFacesConfig, make_synthfaces
from facekd.synthfaces.export import dataset_images, export_synthfaces

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
PAPERS = (
    "Rectifying the Data Bias in Knowledge Distillation",
    "Prime-Aware Adaptive Distillation",
    "Rethinking Feature-based Knowledge Distillation for Face Recognition",
    "Evaluation-oriented Knowledge Distillation for Deep Face Recognition",
    "AdaDistill: Adaptive Knowledge Distillation for Deep Face Recognition",
    "Grouped Knowledge Distillation for Deep Face Recognition",
    "MarginDistillation: distillation for margin-based softmax",
)
DATA_PATHS = {  # the placeholder path of each data kind in the recipes → the fixture's folder
    "recordio": "rec",
    "market1501": "market",
    "dukemtmc": "duke",
    "folder": "classes",
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """SynthFaces quick, exported to RecordIO + .bin + IJB, and its train split as a re-ID layout
    (Market and Duke file names) and as a class folder."""
    root = tmp_path_factory.mktemp("synth")
    data = make_synthfaces(SynthFacesConfig.preset("quick"))
    export_synthfaces(data, root / "rec")
    images, labels = dataset_images(data.train), np.asarray(data.train.labels)
    for i, (image, label) in enumerate(zip(images, labels)):
        pid, cam = int(label) + 1, 1 + i % 6
        for kind, name in (
            ("market", f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg"),
            ("duke", f"{pid:04d}_c{cam}_f{i:07d}.jpg"),
        ):
            (root / kind / "bounding_box_train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / kind / "bounding_box_train" / name)
        (root / "classes" / f"{int(label):03d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "classes" / f"{int(label):03d}" / f"{i}.png")
    return root


def _placeholders(raw, found: set[str]) -> None:
    """The teacher files (runs/…/*.pth) a recipe refers to."""
    if isinstance(raw, dict):
        for value in raw.values():
            _placeholders(value, found)
    elif isinstance(raw, str) and raw.startswith("runs/") and raw.endswith(".pth"):
        found.add(raw)


@pytest.fixture()
def in_runs(tmp_path, monkeypatch, synth):
    """A working directory holding every teacher file the recipes name (a head.pth with class
    centres for the quick set's classes; other files need only exist to validate)."""
    monkeypatch.chdir(tmp_path)
    num_classes = build_dataset(
        load_config(None, ["data.kind=recordio", f"data.path={synth / 'rec'}"]).data
    ).num_classes
    found: set[str] = set()
    for recipe in RECIPES:
        _placeholders(yaml.safe_load(recipe.read_text()), found)
    for name in found:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": torch.randn(num_classes, 512)}, name)
    return tmp_path


def test_there_is_a_recipe_for_each_experiment():
    names = {p.stem for p in RECIPES}
    for arch in ("mbf", "r18"):
        assert {f"bias_ms1mv3_{arch}_{v}" for v in ("scratch", "kd", "kd_es", "kd_is")} <= names
    for kind in ("market1501", "dukemtmc"):
        assert {f"bias_{kind}_shufflenet_{v}" for v in ("scratch", "kd", "kd_es", "kd_is")} <= names
    assert {f"pad_cifar100_mbf_{loss}" for loss in ("l2", "fitnet", "at")} <= names
    assert {"refo_ms1mv2_r100_to_r18", "refo_plus_ms1mv2_r100_to_mbf", "refo_ms1mv2_r18_fo"} <= names
    for loss in ("ekd", "gkd", "adadistill", "margin_distillation"):
        assert loss in LOSSES and f"kd_ms1mv3_mbf_{loss}" in names


def _header(recipe: Path) -> str:
    lines = recipe.read_text().splitlines()
    head = "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])
    assert any(title in head.replace("\n# ", " ") for title in PAPERS), f"{recipe.name}: no paper title on top"
    assert "\n# Schedule" in head, f"{recipe.name}: the source of the schedule is not stated"
    assert f"configs/{recipe.name}" in head, f"{recipe.name}: its Run line names another file"
    return head


def _check_distiller(cfg, dataset) -> None:
    d = cfg.distill
    block = {"loss": d.loss, "weighting": d.weighting, "lambda": d.lam, "normalize": d.normalize, "options": d.options}
    maps = LOSSES[d.loss].reads == "maps"
    size = dataset.image_size
    student = get_model(cfg.model.arch, input_size=size)  # PAD's branch reads its backbone feature
    teacher = get_model(cfg.teacher.arch, input_size=size) if maps else None
    Distiller.from_config(
        block,
        student_dim=512,
        teacher_dim=512,
        student=student,
        teacher=teacher,
        input_size=size,
        num_classes=dataset.num_classes,
    )


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates_on_exported_synthfaces(recipe, synth, in_runs):
    head = _header(recipe)
    raw = yaml.safe_load(recipe.read_text())
    kind = raw["data"]["kind"]
    override = f"data.path={synth / DATA_PATHS[kind]}"
    if "refo" in raw:
        assert "facekd refo" in head
        run = load_refo_file(recipe, [override])
        build_dataset(run.data)
        nets = [run.refo.teacher, run.refo.student] + ([run.refo.original_teacher] if run.refo.original_teacher else [])
        assert all(net.arch in list_models() for net in nets)
        assert Path(run.run_dir) == Path("runs") / recipe.stem
        return
    cfg = load_config(recipe, [override])
    assert cfg.run_dir == Path("runs") / recipe.stem
    assert cfg.model.arch in list_models()
    dataset = build_dataset(cfg.data)
    if cfg.teacher is not None:
        assert cfg.teacher.arch in list_models()
    if cfg.distill is not None:
        _check_distiller(cfg, dataset)


@pytest.mark.slow
def test_a_recipe_trains_a_few_steps(synth, in_runs, tmp_path):
    """MobileFaceNet, KD + Intrinsic Sampling, on the RecordIO export (a tiny stand-in teacher)."""
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    torch.save(get_model("mbf_tiny", embedding_size=64, input_size=32).state_dict(), teacher)
    overrides = [
        f"data.path={synth / 'rec'}",
        f"teacher.checkpoint={teacher}",
        "teacher.arch=mbf_tiny",
        "train.epochs=1",
        "train.batch_size=32",
        "train.amp=false",
    ]
    cfg = load_config(ROOT / "configs" / "bias_ms1mv3_mbf_kd_is.yaml", overrides)
    run_training(cfg, progress=False)
    run = tmp_path / "runs" / "bias_ms1mv3_mbf_kd_is"
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (run / "done").exists() and np.isfinite(logs[-1]["distill"]) and np.isfinite(logs[-1]["loss"])
    record = json.loads((run / "run.json").read_text())["record"]
    assert record["config"]["sampler"]["name"] == "intrinsic"
    assert re.fullmatch(r"[0-9a-f]{64}", record["teacher"]["cache"]["model_sha256"])
