"""ReFO / ReFO+ pipeline on tiny data: each stage, resume after a kill, memory arithmetic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.refo import (
    RefoConfig,
    class_centre_memory,
    run_refo,
)

REPO = Path(__file__).resolve().parents[1]

# 8 identities × 6 images of 16 px: each identity is a noisy copy of its own random template.
TINY_DATA = textwrap.dedent(
    """
    import numpy as np
    from facekd.data.arrays import ArrayDataset

    def tiny(seed=0, n_id=8, per_id=6, size=16):
        rng = np.random.default_rng(seed)
        templates = rng.integers(0, 256, size=(n_id, size, size, 3))
        labels = np.repeat(np.arange(n_id), per_id)
        noise = rng.normal(0, 30, size=(labels.size, size, size, 3))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return ArrayDataset(images, labels, name=f"tiny{seed}")
    """
)
_ns: dict = {}
exec(TINY_DATA, _ns)
tiny = _ns["tiny"]


def tiny_config(**over) -> RefoConfig:
    train = {"epochs": 1, "batch_size": 16, "lr": 0.05, "seed": 0, "log_every": 1}
    cfg = dict(
        teacher={"arch": "iresnet_mini", "embedding_size": 24},
        student={"arch": "iresnet_mini", "embedding_size": 16},
        proxy_train=train,
        teacher_train=train,
        student_train=train,
        embed_batch_size=32,
    )
    cfg.update(over)
    return RefoConfig(**cfg)


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_config_defaults_and_errors():
    cfg = tiny_config()
    assert cfg.beta1_value == 0.5 and cfg.beta2 == 5.0 and cfg.variant == "refo"
    assert tiny_config(normalize=False).beta1_value == 0.001
    assert tiny_config(beta1=2.0).beta1_value == 2.0
    with pytest.raises(ValueError, match="original_checkpoint"):
        tiny_config(variant="refo_plus")
    with pytest.raises(ValueError, match="student_train.epochz"):
        tiny_config(student_train={"epochz": 1})


def test_pipeline_stages_and_reuse(tmp_path):
    torch.set_num_threads(1)
    d1, d2 = tiny(0), tiny(1)
    logs: list[str] = []
    res = run_refo(tiny_config(), tmp_path, d1, d2, progress=False, log=logs.append)
    for stage in ("proxy", "proxy_embed", "reverse", "teacher_embed", "student"):
        assert (tmp_path / stage / "stage.json").is_file(), stage
    assert not (tmp_path / "original_embed").exists()  # ReFO: no original teacher involved
    # 1: proxy trained with L_cls only
    proxy_m = _metrics(tmp_path / "proxy" / "metrics.jsonl")
    assert "cls" in proxy_m[0] and "distill" not in proxy_m[0]
    # 2: D1 embedded by the proxy, normalised, proxy's size
    assert res.proxy_cache.embeddings.shape == (len(d1), 16)
    np.testing.assert_allclose(np.linalg.norm(res.proxy_cache.embeddings, axis=1), 1.0, atol=1e-5)
    # 3: the teacher trained with L_cls + β1 L_emb towards the proxy: projection 24 → 16 in the task
    rev = torch.load(tmp_path / "reverse" / "checkpoints" / "last.pt", weights_only=True)["task"]
    assert any(k.startswith("head.") for k in rev)
    proj = [v for k, v in rev.items() if k.startswith("distiller.") and v.ndim == 2]
    assert [tuple(p.shape) for p in proj] == [(16, 24)]
    rev_m = _metrics(tmp_path / "reverse" / "metrics.jsonl")
    assert "cls" in rev_m[0] and "distill" in rev_m[0]
    # 4: D2 (not D1) embedded by the tailored teacher
    assert res.teacher_cache.embeddings.shape == (len(d2), 24)
    assert res.teacher_cache.meta["dataset_fingerprint"] == d2.fingerprint()
    # 5: feature-only student: no head, no labels, β2 L_emb only
    stu = torch.load(tmp_path / "student" / "checkpoints" / "last.pt", weights_only=True)["task"]
    assert not any(k.startswith("head.") for k in stu)
    stu_m = _metrics(tmp_path / "student" / "metrics.jsonl")
    assert "cls" not in stu_m[0] and stu_m[0]["loss"] == pytest.approx(stu_m[0]["distill"])
    assert res.student(torch.zeros(2, 3, 16, 16)).shape == (2, 16)
    # re-running reuses every stage and changes no file
    stamp = (tmp_path / "student" / "backbone.pth").stat().st_mtime_ns
    logs.clear()
    run_refo(tiny_config(), tmp_path, d1, d2, progress=False, log=logs.append)
    assert sum("done, reused" in line for line in logs) == 5
    assert (tmp_path / "student" / "backbone.pth").stat().st_mtime_ns == stamp
    # a changed β2 is refused at the student stage, naming it
    with pytest.raises(ValueError, match="'student' was finished with a different"):
        run_refo(tiny_config(beta2=1.0), tmp_path, d1, d2, progress=False, log=logs.append)


def test_labels_of_distillation_data_are_not_used(tmp_path):
    # Feature-only student: permuting D2's labels must not change the trained student at all.
    from facekd.data.arrays import ArrayDataset
    from facekd.embed import embed_dataset
    from facekd.refo import NetSpec, build_backbone, train_feature_only
    from facekd.train import TrainConfig

    torch.set_num_threads(1)
    d2 = tiny(1)
    shuffled = ArrayDataset(d2.images, np.random.default_rng(0).permutation(d2.labels), name="perm")
    teacher = build_backbone(NetSpec(arch="iresnet_mini", embedding_size=16), 16, seed=0)
    tc = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=0)
    spec = NetSpec(arch="iresnet_mini", embedding_size=16)
    out = []
    for name, ds in (("a", d2), ("b", shuffled)):
        cache = embed_dataset(teacher, ds, tmp_path / f"cache_{name}", progress=False)
        model = build_backbone(spec, 16, seed=0)
        out.append(train_feature_only(model, ds, cache, tc, tmp_path / name, progress=False).state_dict())
    for k in out[0]:
        assert torch.equal(out[0][k], out[1][k]), k


def test_refo_plus_proxy_is_distilled_from_original(tmp_path):
    from facekd.refo import NetSpec, build_backbone

    torch.set_num_threads(1)
    spec = NetSpec(arch="iresnet_mini", embedding_size=24)
    ckpt = tmp_path / "original.pth"
    torch.save(build_backbone(spec, 16, seed=3).state_dict(), ckpt)
    cfg = tiny_config(
        variant="refo_plus", original_teacher=spec.model_dump(), original_checkpoint=str(ckpt), proxy_lambda=2.0
    )
    run_refo(cfg, tmp_path / "run", tiny(0), progress=False, log=lambda s: None)
    orig = json.loads((tmp_path / "run" / "original_embed" / "stage.json").read_text())
    assert Path(orig["artifacts"]["cache"]).is_dir()
    proxy_m = _metrics(tmp_path / "run" / "proxy" / "metrics.jsonl")
    assert "cls" in proxy_m[0] and proxy_m[0]["distill"] > 0  # L_cls + λ_p L_emb(f_s', f_t)


KILL_SCRIPT = TINY_DATA + textwrap.dedent(
    """
    import sys, torch
    from facekd.refo import RefoConfig, run_refo

    def kill_config():  # a reverse stage long enough (120 steps, checkpoint every 3) to be killed in
        quick = {"epochs": 1, "batch_size": 16, "lr": 0.05, "seed": 0}
        slow = {"epochs": 40, "batch_size": 16, "lr": 0.05, "seed": 0, "checkpoint_every": 3}
        return RefoConfig(teacher={"arch": "iresnet_mini", "embedding_size": 16},
                          student={"arch": "iresnet_mini", "embedding_size": 16},
                          proxy_train=quick, teacher_train=slow, student_train=quick)

    if __name__ == "__main__":
        torch.set_num_threads(1)
        run_refo(kill_config(), sys.argv[1], tiny(0), progress=False)
    """
)
exec(KILL_SCRIPT, _ns)


def test_killed_run_resumes_in_its_stage(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    run_dir = tmp_path / "run"
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = run_dir / "reverse" / "checkpoints" / "last.pt"
    deadline = time.time() + 60
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "reverse" / "stage.json").exists()
    assert json.loads((run_dir / "progress.json").read_text())["stage"] == "reverse"
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step_at_kill < 40 * 3

    logs: list[str] = []
    run_refo(_ns["kill_config"](), run_dir, tiny(0), progress=False, log=logs.append)
    assert logs[:3] == [
        "[refo] stage 1 proxy: done, reused",
        "[refo] stage 2 proxy_embed: done, reused",
        "[refo] stage 3 reverse: resuming",
    ]
    steps = [m["step"] for m in _metrics(run_dir / "reverse" / "metrics.jsonl")]
    assert steps[-1] == 40 * 3 and steps == sorted(set(steps))  # continued, not restarted
    assert (run_dir / "student" / "stage.json").is_file()


def test_class_centre_memory_matches_a_real_optimizer():
    # Direct count on a small head: bytes of weights + grads + optimizer state after one step.
    c, d = 37, 8
    for opt_name, key in (("sgdm", "sgd_momentum"), ("adam", "adam")):
        w = torch.nn.Parameter(torch.randn(c, d))
        opt = torch.optim.SGD([w], lr=0.1, momentum=0.9) if opt_name == "sgdm" else torch.optim.Adam([w])
        (w.sum() ** 2).backward()
        opt.step()
        state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
        total = sum(t.numel() * t.element_size() for t in [w, w.grad, *state])
        assert class_centre_memory(c, d)[key] == total
    ms1mv3 = class_centre_memory()
    assert ms1mv3["weights"] == 93_431 * 512 * 4 == 191_346_688
    assert ms1mv3["sgd_momentum"] == 574_040_064 and ms1mv3["adam"] == 765_386_752


def test_cli_refo_runs_and_resumes(tmp_path):
    import typer
    from typer.testing import CliRunner

    from facekd.refo_commands import register

    torch.set_num_threads(1)
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    train = {"epochs": 1, "batch_size": 16, "lr": 0.05}
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "data": {
            "kind": "synthfaces",
            "preset": "quick",
            "cache_dir": str(tmp_path / "data"),
            "synthfaces": {
                "image_size": 16,
                "num_train_identities": 6,
                "max_images_per_identity": 8,
                "num_test_identities": 4,
                "test_images_per_identity": 4,
                "num_genuine_pairs": 4,
                "num_impostor_pairs": 8,
                "hard_pair_fraction": None,
            },
        },
        "refo": {
            "teacher": {"arch": "iresnet_mini", "embedding_size": 16},
            "student": {"arch": "iresnet_mini", "embedding_size": 8},
            "proxy_train": train,
            "teacher_train": train,
            "student_train": train,
        },
    }
    path = tmp_path / "refo.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["refo", str(path), "refo.beta2=2", "--no-progress"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "stage 5 student: starting" in r.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["refo"]["beta2"] == 2
    r = CliRunner().invoke(app, ["refo", str(path), "refo.beta2=2", "--no-progress"])
    assert r.exit_code == 0 and r.output.count("done, reused") == 5
    r = CliRunner().invoke(app, ["refo", str(path), "refo.beta3=2"])
    assert r.exit_code != 0 and "refo.beta3" in str(r.exception)


def test_demo_main_experiment_on_tiny_settings(tmp_path):
    from facekd.demo import refo as demo_refo
    from facekd.demo.core import DemoContext, DemoSettings

    torch.set_num_threads(1)
    net = {"embedding_size": 16, "epochs": 1, "batch_size": 16, "warmup_epochs": 0}
    settings = DemoSettings(
        tier="default",
        seeds=[0, 1],
        data_preset="quick",
        data={
            "image_size": 16,
            "num_train_identities": 6,
            "max_images_per_identity": 10,
            "num_test_identities": 4,
            "test_images_per_identity": 4,
            "num_genuine_pairs": 8,
            "num_impostor_pairs": 16,
            "hard_pair_fraction": None,
        },
        teacher={"arch": "iresnet_mini", **net},
        student={"arch": "iresnet_mini", **net},
        eval_flip=False,
    )
    ctx = DemoContext(tmp_path, settings, progress=False)
    result = demo_refo.run_main(ctx)
    assert set(result["students"]) == {"FO from original", "FO from refo"}
    assert all(len(v) == 1 for v in result["students"].values())  # default tier: first seed only
    assert set(result["id"]) == {
        "teacher: original",
        "FO student from original",
        "teacher: refo",
        "FO student from refo",
        "proxy (ReFO, L_cls)",
    }
    # the ReFO proxy is the spine's scratch student, reused, and the FO student has no head
    assert (tmp_path / "students" / "scratch" / "seed0" / "done").is_file()
    fo = torch.load(
        tmp_path / "students" / "refo_fo" / "original" / "iresnet_mini_b5" / "seed0" / "checkpoints" / "last.pt",
        weights_only=True,
    )["task"]
    assert not any(k.startswith("head.") for k in fo)
    text = demo_refo.report_main(ctx, json.loads(json.dumps(result)))
    assert "FO from refo" in text and "574.0 MB" in text
