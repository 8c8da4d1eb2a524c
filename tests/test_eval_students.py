"""`facekd eval` of classification and metric students from a run directory, `facekd train`'s
final train / validation lines, `model.options`, splits in every command, --threads everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from facekd.cli import app
from facekd.config import ConfigError, DataConfig, build_dataset, load_config
from facekd.evaluate.classification import classification_accuracy
from facekd.evaluate.reid import evaluate_reid_features, recall_at_k
from facekd.evaluate.students import last_epoch_means, load_student


def _invoke(args, capsys):
    with pytest.raises(SystemExit) as info:
        app([str(a) for a in args], prog_name="facekd")
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _arrays(tmp_path, n=60, classes=5, size=16) -> Path:
    """Class-coloured noisy images: learnable in one epoch."""
    g = np.random.default_rng(0)
    labels = np.arange(n) % classes
    base = g.integers(0, 255, size=(classes, size, size, 3))
    images = np.clip(base[labels] + g.integers(-30, 30, size=(n, size, size, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    return tmp_path / "data.npz"


def _config(tmp_path, name: str, **blocks) -> Path:
    raw = {
        "task": "classification",
        "data": {"kind": "arrays", "path": str(tmp_path / "data.npz"), "val_fraction": 0.25},
        "model": {"arch": "small_cnn", "embedding_size": 8, "options": {"width": 4}},
        "head": {"name": "softmax"},
        "train": {"epochs": 2, "batch_size": 15, "lr": 0.05, "log_every": 1},
        "run_dir": str(tmp_path / name),
        **blocks,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_classification_student_train_prints_metrics_and_eval_reads_the_run(tmp_path, capsys):
    _arrays(tmp_path)
    code, out, err = _invoke(["train", _config(tmp_path, "cls"), "--no-progress"], capsys)
    assert code == 0, err
    run = tmp_path / "cls"
    train_line = next(x for x in out.splitlines() if x.startswith("train (last epoch"))
    val_line = next(x for x in out.splitlines() if x.startswith("val val: top1"))
    # the train line is the mean of the last epoch's logged steps (2 steps of 15 of 45 rows)
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5, 6]
    assert f"acc {100 * np.mean([r['acc'] for r in logs[3:]]):.2f}" in train_line
    assert last_epoch_means(run / "metrics.jsonl", 2)["acc"] == pytest.approx(np.mean([r["acc"] for r in logs[3:]]))

    # eval of the run directory on its held-out rows: the same top-1 as the backbone + head.pth by hand
    code, out, err = _invoke(["eval", "--checkpoint", run, "--split", "val", "--out", tmp_path / "ev"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    cfg = load_config(run / "config.yaml")
    val = build_dataset(cfg.data.model_copy(update={"split": "val"}))
    backbone = torch.load(run / "backbone.pth", weights_only=True)
    head = torch.load(run / "head.pth", weights_only=True)
    from facekd.models import get_model

    model = get_model("small_cnn", embedding_size=8, input_size=16, width=4)
    model.load_state_dict(backbone)
    model.eval()
    with torch.no_grad():
        x = torch.stack([val[i]["image"] for i in range(len(val))])
        logits = model(x) @ head["weight"].T + head["bias"]
    expect = classification_accuracy(logits.numpy(), val.labels, (1, 5))
    assert res["n"] == len(val) == 15 and res["top1"] == pytest.approx(expect.topk[1])
    assert res["top5"] == pytest.approx(expect.topk[5]) and len(res["per_class"]) == 5
    assert f"top1 {100 * expect.topk[1]:.2f}" in out and f"top1 {100 * expect.topk[1]:.2f}" in val_line


def test_eval_classification_of_a_backbone_file_with_explicit_task_and_data(tmp_path, capsys):
    _arrays(tmp_path)
    assert _invoke(["train", _config(tmp_path, "cls"), "--no-progress"], capsys)[0] == 0
    run = tmp_path / "cls"
    args = ["eval", "--checkpoint", run / "backbone.pth", "--task", "classification", "--kind", "arrays"]
    code, out, err = _invoke([*args, "--data", tmp_path / "data.npz", "--split", "train"], capsys)
    assert code == 0, err
    assert "train: top1" in out and "(60 images)" in out, out  # no val_fraction given: all 60 rows
    # without config.yaml beside it, the architecture must be named
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "backbone.pth").write_bytes((run / "backbone.pth").read_bytes())
    code, _, err = _invoke(["eval", "--checkpoint", tmp_path / "bare", "--task", "classification"], capsys)
    assert code == 2 and err.count("\n") == 1 and "give --arch" in err
    code, _, err = _invoke(
        ["eval", "--checkpoint", tmp_path / "bare", "--arch", "small_cnn", "--task", "classification"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "head.pth does not exist" in err


def test_eval_refuses_a_split_the_data_lacks(tmp_path, capsys):
    _arrays(tmp_path)
    assert _invoke(["train", _config(tmp_path, "cls"), "--no-progress"], capsys)[0] == 0
    code, _, err = _invoke(["eval", "--checkpoint", tmp_path / "cls", "--split", "test"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "kind arrays has split train (and val with val_fraction), not test" in err


def test_metric_student_recall_at_k_from_the_run(tmp_path, capsys):
    _arrays(tmp_path, n=80, classes=8)
    cfg = _config(
        tmp_path,
        "metric",
        task="metric",
        model={"arch": "small_cnn", "embedding_size": 8},
        sampler={"name": "pk", "options": {"p": 4, "k": 4}},
        train={"epochs": 1, "batch_size": 16, "lr": 0.05},
    )
    code, out, err = _invoke(["train", cfg, "--no-progress"], capsys)
    assert code == 0, err
    assert "val val: R@1" in out
    code, out, err = _invoke(
        ["eval", "--checkpoint", tmp_path / "metric", "--split", "val", "--ks", "1,4", "--out", tmp_path / "ev"], capsys
    )
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    student = load_student(tmp_path / "metric", None, "metric")
    val = build_dataset(DataConfig(kind="arrays", path=tmp_path / "data.npz", val_fraction=0.25, split="val"))
    with torch.no_grad():
        feats = student.model(torch.stack([val[i]["image"] for i in range(len(val))])).numpy()
    expect = recall_at_k(feats, val.labels, (1, 4))
    assert res["recall@1"] == pytest.approx(expect[1]) and res["recall@4"] == pytest.approx(expect[4])


def _market(root: Path) -> None:
    """A Market-1501 folder: 4 identities × 2 cameras in train, query and gallery of 3 identities."""
    g = np.random.default_rng(1)
    colours = g.integers(0, 255, size=(8, 3))

    def write(folder: str, names: list[tuple[int, int, int]]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for pid, cam, k in names:
            img = np.clip(colours[pid] + g.integers(-10, 10, size=(32, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / folder / f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg", quality=95)

    write("bounding_box_train", [(p, c, k) for p in range(4) for c in (1, 2) for k in range(4)])
    write("query", [(p, 1, 0) for p in range(4, 7)])
    write("bounding_box_test", [(p, 2, k) for p in range(4, 8) for k in range(2)])


def test_metric_student_on_reid_data_gives_cmc_and_map(tmp_path, capsys):
    root = tmp_path / "Market-1501-v15.09.15"
    _market(root)
    data = {"kind": "market1501", "path": str(root), "image_size": [32, 16]}
    cfg = _config(
        tmp_path,
        "reid",
        task="metric",
        data=data,
        model={"arch": "small_cnn", "embedding_size": 8},
        sampler={"name": "pk", "options": {"p": 2, "k": 4}},
        train={"epochs": 1, "batch_size": 8, "lr": 0.05},
    )
    assert _invoke(["train", cfg, "--no-progress"], capsys)[0] == 0
    code, out, err = _invoke(["eval", "--checkpoint", tmp_path / "reid", "--out", tmp_path / "ev"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    student = load_student(tmp_path / "reid", None, "metric")
    sides = []
    for split in ("query", "gallery"):
        ds = build_dataset(DataConfig.model_validate({**data, "split": split}))
        with torch.no_grad():
            f = student.model(torch.stack([ds[i]["image"] for i in range(len(ds))])).numpy()
        sides.append((f, ds.pids, ds.camids))
    (qf, qp, qc), (gf, gp, gc) = sides
    expect = evaluate_reid_features(qf, gf, qp, gp, qc, gc).to_dict()
    assert res["split"] == "query/gallery" and res["mAP"] == pytest.approx(expect["mAP"])
    assert res["rank1"] == pytest.approx(expect["rank1"]) and "mAP" in out


def test_model_options_reach_the_constructor_and_bad_ones_name_the_key(tmp_path):
    _arrays(tmp_path)
    cfg = load_config(_config(tmp_path, "wide"), ["model.options.width=6"])
    from facekd.build import build_run

    run = build_run(cfg)
    assert run.task.student.stages[0][0].out_channels == 6
    with pytest.raises(ConfigError, match=r"model: options: small_cnn does not take depth \(it takes .*width"):
        load_config(_config(tmp_path, "bad"), ["model.options.depth=3"])
    with pytest.raises(ConfigError, match="give embedding_size as model keys"):
        load_config(_config(tmp_path, "bad"), ["model.options.embedding_size=3"])


def test_embed_split_val_holds_out_the_same_rows_as_training(tmp_path, capsys):
    _arrays(tmp_path)
    base = ["embed", "--arch", "small_cnn", "--kind", "arrays", "--data", tmp_path / "data.npz", "--no-progress"]
    code, out, err = _invoke([*base, "--split", "val", "--val-fraction", "0.25", "--out", tmp_path / "v"], capsys)
    assert code == 0 and "15 × " in out, err
    labels = np.load(tmp_path / "v" / "labels.npy")
    val = build_dataset(DataConfig(kind="arrays", path=tmp_path / "data.npz", val_fraction=0.25, split="val"))
    assert labels.tolist() == val.labels.tolist()
    code, _, err = _invoke([*base, "--split", "val", "--out", tmp_path / "w"], capsys)
    assert code == 2 and err.count("\n") == 1 and "split val of kind arrays needs val_fraction" in err


COMMANDS_THAT_COMPUTE = [
    "train",
    "embed",
    "eval",
    "eval-ijb",
    "eval-reid",
    "eval-retrieval",
    "intrinsic-dim",
    "refo",
    "export-synth",
    "inspect-rec",
    "pack-rec",
    "export",
    "check-onnx",
    "density",
    "uniformity",
    "resample",
    "demo",
]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS_THAT_COMPUTE)
def test_every_command_takes_threads(command, capsys):
    code, out, _ = _invoke([command, "--help"], capsys)
    assert code == 0 and "--threads" in out


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        code, _, _ = _invoke(["eval-retrieval", tmp_path / "missing", "--threads", "2"], capsys)
        assert code == 2 and torch.get_num_threads() == 2  # set before the command ran (and failed)
    finally:
        torch.set_num_threads(before)
