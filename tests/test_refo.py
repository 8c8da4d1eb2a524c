"""ReFO / ReFO+ pipeline on tiny data: each stage, content-addressed reuse, resume after a kill,
memory arithmetic."""

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
import yaml

from facekd.config import DataConfig
from facekd.refo import RefoConfig, StageStore, class_centre_memory, run_refo, student_config

REPO = Path(__file__).resolve().parents[1]

# 8 identities × 6 images of 16 px: each identity is a noisy copy of its own random template.
TINY_DATA = textwrap.dedent(
    """
    import numpy as np

    def write_tiny(path, seed=0, n_id=8, per_id=6, size=16):
        rng = np.random.default_rng(seed)
        templates = rng.integers(0, 256, size=(n_id, size, size, 3))
        labels = np.repeat(np.arange(n_id), per_id)
        noise = rng.normal(0, 30, size=(labels.size, size, size, 3))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        np.savez(path, images=images, labels=labels)
        return {"kind": "arrays", "path": str(path)}
    """
)
_ns: dict = {}
exec(TINY_DATA, _ns)


def tiny(tmp_path: Path, seed: int = 0) -> DataConfig:
    return DataConfig(**_ns["write_tiny"](tmp_path / f"tiny{seed}.npz", seed))


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


def _metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _task_state(run_dir: str | Path) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)["task"]


def test_config_defaults_and_errors():
    cfg = tiny_config()
    assert cfg.beta1_value == 0.5 and cfg.beta2 == 5.0 and cfg.variant == "refo"
    assert cfg.proxy_model == cfg.student
    assert tiny_config(proxy={"arch": "mbf_tiny"}).proxy_model.arch == "mbf_tiny"
    assert tiny_config(normalize=False).beta1_value == 0.001
    assert tiny_config(beta1=2.0).beta1_value == 2.0
    with pytest.raises(ValueError, match="original_checkpoint"):
        tiny_config(variant="refo_plus")
    with pytest.raises(ValueError, match="student_train.epochz"):
        tiny_config(student_train={"epochz": 1})


@pytest.mark.slow
def test_pipeline_stages_and_reuse(tmp_path):
    torch.set_num_threads(1)
    d1, d2 = tiny(tmp_path, 0), tiny(tmp_path, 1)
    logs: list[str] = []
    res = run_refo(tiny_config(), tmp_path / "run", d1, d2, progress=False, log=logs.append)
    assert list(res.stages) == ["proxy", "proxy_embed", "reverse", "teacher_embed", "student"]
    assert json.loads((tmp_path / "run" / "stages.json").read_text()) == res.stages
    # 1: proxy trained with L_cls only
    proxy_m = _metrics(res.proxy.directory)
    assert "cls" in proxy_m[0] and "distill" not in proxy_m[0]
    # 2: D1 embedded by the proxy, normalised, proxy's size
    assert res.proxy_cache.embeddings.shape == (48, 16)
    np.testing.assert_allclose(np.linalg.norm(res.proxy_cache.embeddings, axis=1), 1.0, atol=1e-5)
    # 3: the teacher trained with L_cls + β1 L_emb towards the proxy: projection 24 → 16 in the task
    rev = _task_state(res.tailored_teacher.directory)
    assert any(k.startswith("head.") for k in rev)
    proj = [v for k, v in rev.items() if k.startswith("distiller.") and v.ndim == 2]
    assert [tuple(p.shape) for p in proj] == [(16, 24)]
    rev_m = _metrics(res.tailored_teacher.directory)
    assert "cls" in rev_m[0] and "distill" in rev_m[0]
    assert res.tailored_teacher.config.distill.lam == 0.5
    # 4: D2 (not D1) embedded by the tailored teacher
    from facekd.config import build_dataset

    assert res.teacher_cache.embeddings.shape == (48, 24)
    assert res.teacher_cache.meta["dataset_fingerprint"] == build_dataset(d2).fingerprint()
    # 5: feature-only student: no head, no labels, β2 L_emb only
    stu = _task_state(res.student.directory)
    assert not any(k.startswith("head.") for k in stu)
    stu_m = _metrics(res.student.directory)
    assert "cls" not in stu_m[0] and stu_m[0]["loss"] == pytest.approx(stu_m[0]["distill"])
    assert res.student.model(torch.zeros(2, 3, 16, 16)).shape == (2, 16)
    # re-running reuses every stage and changes no file
    stamp = (res.student.directory / "backbone.pth").stat().st_mtime_ns
    logs.clear()
    run_refo(tiny_config(), tmp_path / "run", d1, d2, progress=False, log=logs.append)
    assert sum("done, reused" in line for line in logs) == 5
    assert (res.student.directory / "backbone.pth").stat().st_mtime_ns == stamp
    # a changed β2 trains only a new student; the first four stages and the old student stay
    logs.clear()
    other = run_refo(tiny_config(beta2=1.0), tmp_path / "run", d1, d2, progress=False, log=logs.append)
    assert sum("done, reused" in line for line in logs) == 4 and "[refo] stage 5 student: starting" in logs
    assert other.student.directory != res.student.directory
    assert other.tailored_teacher.directory == res.tailored_teacher.directory
    assert (res.student.directory / "backbone.pth").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_shared_store_shares_stages_across_pipelines(tmp_path):
    # A β1 sweep in one store trains the proxy once; a proxy of another architecture is its own stage.
    torch.set_num_threads(1)
    d1 = tiny(tmp_path)
    store = StageStore(tmp_path / "store", progress=False)
    logs: list[str] = []
    a = run_refo(tiny_config(), tmp_path / "a", d1, store=store, progress=False, log=logs.append)
    logs.clear()
    b = run_refo(tiny_config(beta1=2.0), tmp_path / "b", d1, store=store, progress=False, log=logs.append)
    assert logs[:2] == ["[refo] stage 1 proxy: done, reused", "[refo] stage 2 proxy_embed: done, reused"]
    assert b.proxy.directory == a.proxy.directory and b.tailored_teacher.directory != a.tailored_teacher.directory
    other_proxy = tiny_config(proxy={"arch": "iresnet_mini", "embedding_size": 8})
    c = run_refo(other_proxy, tmp_path / "c", d1, store=store, progress=False)
    assert c.proxy.directory != a.proxy.directory and c.proxy_cache.embeddings.shape[1] == 8
    assert c.student.model(torch.zeros(1, 3, 16, 16)).shape == (1, 16)  # the student keeps its own size
    assert sorted(p.name for p in (tmp_path / "store" / "runs").iterdir()) == sorted(
        {r.directory.name for r in (a.proxy, a.tailored_teacher, a.student, b.tailored_teacher, b.student)}
        | {c.proxy.directory.name, c.tailored_teacher.directory.name, c.student.directory.name}
    )


@pytest.mark.slow
def test_labels_of_distillation_data_are_not_used(tmp_path):
    # Feature-only student: permuting D2's labels must not change the trained student at all.
    from facekd.config import build_dataset
    from facekd.models import get_model

    torch.set_num_threads(1)
    d2 = tiny(tmp_path, 1)
    with np.load(d2.path) as z:
        images, labels = z["images"], z["labels"]
    np.savez(tmp_path / "perm.npz", images=images, labels=np.random.default_rng(0).permutation(labels))
    shuffled = DataConfig(kind="arrays", path=tmp_path / "perm.npz")
    torch.manual_seed(0)
    teacher = get_model("iresnet_mini", embedding_size=16, input_size=16)
    store = StageStore(tmp_path / "store", progress=False)
    cfg = tiny_config()
    out = []
    for data in (d2, shuffled):
        cache = store.embed(teacher, build_dataset(data))
        out.append(store.train(student_config(cfg, data, cache)))
    assert out[0].directory != out[1].directory  # different data, different runs ...
    a, b = out[0].model.state_dict(), out[1].model.state_dict()
    for k in a:  # ... and the same student
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_refo_plus_proxy_is_distilled_from_original(tmp_path):
    from facekd.models import get_model

    torch.set_num_threads(1)
    spec = {"arch": "iresnet_mini", "embedding_size": 24}
    ckpt = tmp_path / "original.pth"
    torch.manual_seed(3)
    torch.save(get_model(spec["arch"], embedding_size=24, input_size=16).state_dict(), ckpt)
    cfg = tiny_config(variant="refo_plus", original_teacher=spec, original_checkpoint=ckpt, proxy_lambda=2.0)
    res = run_refo(cfg, tmp_path / "run", tiny(tmp_path), progress=False, log=lambda s: None)
    assert res.original_cache is not None and res.stages["original_embed"]["dir"] == str(res.original_cache.directory)
    assert res.original_cache.embeddings.shape == (48, 24)
    proxy_m = _metrics(res.proxy.directory)
    assert "cls" in proxy_m[0] and proxy_m[0]["distill"] > 0  # L_cls + λ_p L_emb(f_s', f_t)
    assert res.proxy.config.distill.lam == 2.0 and res.proxy.config.teacher.cache == res.original_cache.directory
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        missing = cfg.model_copy(update={"original_checkpoint": tmp_path / "missing.pth"})
        run_refo(missing, tmp_path / "r2", tiny(tmp_path), progress=False)


@pytest.mark.slow
def test_teacher_init_original_fine_tunes_the_original_teacher(tmp_path):
    """teacher_init "original": the reverse stage is a run config whose model starts from the
    original teacher's weights (`model.init`, loaded by the builder: tests/test_build.py)."""
    from facekd.models import get_model

    torch.set_num_threads(1)
    spec = {"arch": "iresnet_mini", "embedding_size": 24}
    ckpt = tmp_path / "original.pth"
    torch.manual_seed(3)
    torch.save(get_model(spec["arch"], embedding_size=24, input_size=16).state_dict(), ckpt)
    with pytest.raises(ValueError, match="must be teacher.arch"):
        tiny_config(teacher_init="original", original_teacher={"arch": "mbf_tiny"}, original_checkpoint=ckpt)
    with pytest.raises(ValueError, match="teacher_init=original need"):
        tiny_config(teacher_init="original")
    cfg = tiny_config(teacher_init="original", original_teacher=spec, original_checkpoint=ckpt)
    res = run_refo(cfg, tmp_path / "run", tiny(tmp_path), progress=False, log=lambda s: None)
    reverse = yaml.safe_load((Path(res.stages["reverse"]["dir"]) / "config.yaml").read_text())
    assert Path(reverse["model"]["init"]) == ckpt
    assert res.proxy.config.model.init is None


def test_stage_keys_hold_the_content_of_an_init_checkpoint(tmp_path):
    """A stage that starts from `model.init` is keyed by that file's content, not its location."""
    from facekd.config import RunConfig

    data = tiny(tmp_path)
    first, moved = tmp_path / "a" / "backbone.pth", tmp_path / "b.pth"
    first.parent.mkdir()
    torch.save({"w": torch.ones(2)}, first)
    moved.write_bytes(first.read_bytes())

    def key(init):
        cfg = RunConfig(data=data, model={"arch": "iresnet_mini", "init": init}, run_dir=tmp_path / "r")
        return StageStore(tmp_path / "store").run_key(cfg)

    assert key(first.parent) == key(moved)  # a run directory stands for its backbone.pth
    torch.save({"w": torch.zeros(2)}, moved)
    assert key(first) != key(moved)
    with pytest.raises(ValueError, match="init: .*none of backbone.pth"):
        key(tmp_path)


def test_stage_keys_follow_the_defaults_of_distillation_options(tmp_path, monkeypatch):
    """A run that relies on an option's default is a different run once that default changes."""
    from facekd.config import RunConfig
    from facekd.losses.weighting.pad import PADOptions

    torch.save({"w": torch.ones(1)}, tmp_path / "teacher.pth")
    cfg = RunConfig(
        data=tiny(tmp_path),
        model={"arch": "iresnet_mini"},
        distill={"loss": "l2", "weighting": "pad", "lambda": 1.0},
        teacher={"checkpoint": tmp_path / "teacher.pth", "arch": "iresnet_mini"},
        run_dir=tmp_path / "r",
    )
    store = StageStore(tmp_path / "store")
    before = store.run_dir(cfg)
    assert store.run_key(cfg)["distill"]["option_defaults"]["weighting"]["branch_clip"] == 1.0
    monkeypatch.setattr(PADOptions.model_fields["branch_clip"], "default", 2.0)
    assert store.run_dir(cfg) != before


KILL_SCRIPT = TINY_DATA + textwrap.dedent(
    """
    import sys, torch
    from facekd.config import DataConfig
    from facekd.refo import RefoConfig, run_refo

    def kill_config():  # a reverse stage long enough (120 steps, checkpoint every 3) to be killed in
        quick = {"epochs": 1, "batch_size": 16, "lr": 0.05, "seed": 0}
        slow = {"epochs": 40, "batch_size": 16, "lr": 0.05, "seed": 0, "checkpoint_every": 3}
        return RefoConfig(teacher={"arch": "iresnet_mini", "embedding_size": 16},
                          student={"arch": "iresnet_mini", "embedding_size": 16},
                          proxy_train=quick, teacher_train=slow, student_train=quick)

    if __name__ == "__main__":
        torch.set_num_threads(1)
        run_refo(kill_config(), sys.argv[1], DataConfig(kind="arrays", path=sys.argv[2]), progress=False)
    """
)
exec(KILL_SCRIPT, _ns)


@pytest.mark.slow
def test_killed_run_resumes_in_its_stage(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    data = tiny(tmp_path)
    run_dir = tmp_path / "run"
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(data.path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    progress = run_dir / "progress.json"

    def reverse_checkpoint() -> Path | None:
        if not progress.exists():
            return None
        p = json.loads(progress.read_text())
        ckpt = Path(p["dir"]) / "checkpoints" / "last.pt"
        return ckpt if p["stage"] == "reverse" and ckpt.exists() else None

    deadline = time.time() + 60
    while reverse_checkpoint() is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    ckpt = reverse_checkpoint()
    assert ckpt is not None, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckpt.parent.parent / "done").exists()
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step_at_kill < 40 * 3

    logs: list[str] = []
    res = run_refo(_ns["kill_config"](), run_dir, data, progress=False, log=logs.append)
    assert logs[:3] == [
        "[refo] stage 1 proxy: done, reused",
        "[refo] stage 2 proxy_embed: done, reused",
        "[refo] stage 3 reverse: resuming",
    ]
    assert res.tailored_teacher.directory == ckpt.parent.parent
    steps = [m["step"] for m in _metrics(res.tailored_teacher.directory)]
    assert steps[-1] == 40 * 3 and steps == sorted(set(steps))  # continued, not restarted
    assert (res.student.directory / "done").is_file()


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


@pytest.mark.slow
def test_cli_refo_runs_and_resumes(tmp_path):
    import typer
    import yaml
    from typer.testing import CliRunner

    from facekd.refo.commands import register

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
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["refo", str(path), "refo.beta2=2", "--no-progress"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "stage 5 student: starting" in r.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["refo"]["beta2"] == 2
    student_dir = json.loads((tmp_path / "run" / "stages.json").read_text())["student"]["dir"]
    assert student_dir in r.output and (Path(student_dir) / "backbone.pth").is_file()
    r = CliRunner().invoke(app, ["refo", str(path), "refo.beta2=2", "--no-progress"])
    assert r.exit_code == 0 and r.output.count("done, reused") == 5
    r = CliRunner().invoke(app, ["refo", str(path), "refo.beta3=2"])
    assert r.exit_code != 0 and "refo.beta3" in str(r.exception)
