"""Training loop: LR schedule, one run end to end, reuse, a killed-and-resumed run, DDP (gloo, 2 procs)."""

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
from conftest import LinearHead, TinyFaces, TinyNet

from facekd.tasks import FaceTask
from facekd.train import TrainConfig, lr_at, train

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _poly_reference(step, base, warmup, total):
    """arcface_torch PolynomialLRWarmup.get_lr, written out (power 1)."""
    if step < warmup:
        return base * step / warmup
    alpha = 1.0 - (step - warmup) / (total - warmup)
    return base * alpha**1


def test_lr_poly_matches_arcface_torch_formula():
    cfg = TrainConfig(epochs=3, lr=0.1, warmup_epochs=1, schedule="poly")
    spe = 7
    for step in range(3 * spe):
        assert lr_at(step, cfg, spe) == pytest.approx(_poly_reference(step, 0.1, 7, 21), abs=1e-15)


def test_lr_step_matches_torch_multisteplr():
    cfg = TrainConfig(epochs=4, lr=0.2, schedule="step", milestones=[1.5, 3], gamma=0.1)
    spe = 4
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[6, 12], gamma=0.1)
    for step in range(4 * spe):
        assert lr_at(step, cfg, spe) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(Exception, match="lrr"):
        TrainConfig(lrr=0.1)
    with pytest.raises(Exception, match="milestones"):
        TrainConfig(schedule="step", milestones=[3, 1])


def _task(seed=0, bn=True, dropout=0.2):
    torch.manual_seed(seed)
    return FaceTask(TinyNet(dim=6, bn=bn, dropout=dropout), head=LinearHead(6, 4))


def test_train_learns_writes_artifacts_and_reuses(tmp_path):
    ds = TinyFaces(n=64)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.1, warmup_epochs=0.5, log_every=1, seed=3)
    task = train(_task(), ds, cfg, tmp_path, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 17))
    assert {"loss", "lr", "samples_per_s", "cls", "epoch"} <= set(lines[0])
    assert np.mean([r["loss"] for r in lines[-4:]]) < np.mean([r["loss"] for r in lines[:4]])
    assert (tmp_path / "done").exists() and (tmp_path / "checkpoints" / "last.pt").exists()
    backbone = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert set(backbone) == set(task.student.state_dict())
    # a finished run is reused: loading into a fresh task gives the trained weights, metrics untouched
    before = (tmp_path / "metrics.jsonl").read_text()
    again = train(_task(seed=99), ds, cfg, tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    for k, v in task.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(ValueError, match="lr"):
        train(_task(), ds, cfg.model_copy(update={"lr": 0.2}), tmp_path, progress=False)


def test_train_amp_bf16_on_cpu(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, amp=True, log_every=1)
    task = train(_task(), TinyFaces(n=32), cfg, tmp_path, progress=False)
    assert all(torch.isfinite(p).all() for p in task.parameters())


def test_too_few_samples_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch_size=64"):
        train(_task(), TinyFaces(n=32), TrainConfig(batch_size=64), tmp_path, progress=False)


_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from conftest import TinyFaces, TinyNet, LinearHead
    from facekd.tasks import FaceTask
    from facekd.train import TrainConfig, train
    run_dir, delay = sys.argv[1], float(sys.argv[2])
    torch.manual_seed(0)
    task = FaceTask(TinyNet(dim=6, bn=True, dropout=0.2), head=LinearHead(6, 4))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, warmup_epochs=0.5, checkpoint_every=3, seed=1, log_every=1)
    train(task, TinyFaces(n=64, delay=delay), cfg, run_dir, progress=False)
""")


def _run_in_process(run_dir):
    torch.manual_seed(0)
    task = FaceTask(TinyNet(dim=6, bn=True, dropout=0.2), head=LinearHead(6, 4))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, warmup_epochs=0.5, checkpoint_every=3, seed=1, log_every=1)
    return train(task, TinyFaces(n=64), cfg, run_dir, progress=False)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS)))
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed), "0.03"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            step = torch.load(ckpt, weights_only=True)["step"]
            if step >= 9:  # step 9 = epoch 1, batch 1: mid-epoch
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"training finished before it could be killed:\n{proc.stdout.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "done").exists() and 9 <= step < 24
    resumed = _run_in_process(killed)
    reference = _run_in_process(tmp_path / "uninterrupted")
    for k, v in reference.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6, rtol=1e-5), k
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25)), "metrics.jsonl must hold each step once after a resume"


_DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from conftest import TinyFaces, TinyNet, LinearHead
    from facekd import dist
    from facekd.tasks import FaceTask
    from facekd.train import TrainConfig, train
    run_dir = sys.argv[1]
    torch.manual_seed(0)
    task = FaceTask(TinyNet(dim=6), head=LinearHead(6, 4))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, warmup_epochs=0.5, seed=1, log_every=1)
    task = train(task, TinyFaces(n=64), cfg, run_dir, progress=False)
    assert dist.world_size() == 2
    torch.save(task.state_dict(), f"{{run_dir}}/rank{{dist.rank()}}.pt")
    from facekd.embed import embed_dataset
    cache = embed_dataset(task.student, TinyFaces(n=30), f"{{run_dir}}/cache", batch_size=4, progress=False)
    assert cache.embeddings.shape == (30, 6)
""")


@pytest.mark.slow
def test_ddp_two_processes_gloo_matches_single_process(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(TESTS)))
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(run_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r0 = torch.load(run_dir / "rank0.pt", weights_only=True)
    r1 = torch.load(run_dir / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
    # the same global batch (2 × 8 interleaved shards = 16) in one process gives the same weights
    torch.manual_seed(0)
    single = FaceTask(TinyNet(dim=6), head=LinearHead(6, 4))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.5, seed=1, log_every=1)
    single = train(single, TinyFaces(n=64), cfg, tmp_path / "single", progress=False)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, r0[k], atol=1e-6, rtol=1e-5), k
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    # the embedding cache written by two ranks (each its shard, rank 0 assembles) equals one process'
    from facekd.embed import EmbeddingCache, embed_dataset

    ddp_cache = EmbeddingCache.open(run_dir / "cache")
    ref = embed_dataset(single.student, TinyFaces(n=30), tmp_path / "cache1", progress=False)
    np.testing.assert_allclose(ddp_cache.embeddings, ref.embeddings, rtol=1e-5, atol=1e-6)
    assert not list((run_dir / "cache").glob(".*")), "per-rank parts must be removed"


def test_face_task_kd_loss_wiring_and_teachers(tmp_path):
    """loss = mean CE(head) + λ·mean ||n(P s) − n(t)||² with a cached or an online teacher."""
    from facekd.embed import embed_dataset
    from facekd.losses.distiller import Distiller
    from facekd.tasks import CachedTeacher, OnlineTeacher

    ds = TinyFaces(n=16)
    torch.manual_seed(1)
    teacher = TinyNet(dim=5, bn=True)
    cache = embed_dataset(teacher, ds, tmp_path / "cache", progress=False)
    batch = {k: torch.stack([ds[i][k] for i in range(8)]) for k in ("image", "label", "index")}
    for provider in (CachedTeacher(cache), OnlineTeacher(teacher)):
        torch.manual_seed(0)
        task = FaceTask(
            TinyNet(dim=6),
            head=LinearHead(6, 4),
            distiller=Distiller("l2", lam=0.7, student_dim=6, teacher_dim=5),
            teacher=provider,
        )
        task.train()
        assert not teacher.training, "an online teacher stays in eval mode"
        loss, logs = task(batch, step=0)
        with torch.no_grad():
            s = task.student(batch["image"]).double()
            ce = torch.nn.functional.cross_entropy(task.head(s.float(), batch["label"]).double(), batch["label"])
            p = torch.nn.functional.normalize(task.distiller.projection(s.float()).double(), dim=1)
            t = torch.nn.functional.normalize(teacher.eval()(batch["image"]).double(), dim=1)
            kd = 0.7 * ((p - t) ** 2).sum(1).mean()
        assert float(loss.detach()) == pytest.approx(float(ce + kd), rel=1e-5)
        assert logs["cls"] == pytest.approx(float(ce), rel=1e-5)
    with pytest.raises(ValueError, match="not on the training dataset"):
        task = FaceTask(
            TinyNet(dim=6), distiller=Distiller("l2", student_dim=6, teacher_dim=5), teacher=CachedTeacher(cache)
        )
        train(task, TinyFaces(n=16, seed=3), TrainConfig(epochs=1, batch_size=8), tmp_path / "bad", progress=False)


def test_feature_only_task_ignores_labels(tmp_path):
    from facekd.embed import embed_dataset
    from facekd.losses.distiller import Distiller
    from facekd.tasks import CachedTeacher

    ds = TinyFaces(n=32)
    ds.labels[:] = -5  # would crash any classification loss
    torch.manual_seed(1)
    cache = embed_dataset(TinyNet(dim=6, bn=True), ds, tmp_path / "cache", progress=False)
    torch.manual_seed(0)
    task = FaceTask(
        TinyNet(dim=6), distiller=Distiller("l2", student_dim=6, teacher_dim=6), teacher=CachedTeacher(cache)
    )
    cfg = TrainConfig(epochs=6, batch_size=8, lr=0.1, log_every=1)
    train(task, ds, cfg, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "cls" not in lines[0] and lines[-1]["distill"] < lines[0]["distill"]


class _CrashAt(TinyFaces):
    """TinyFaces whose item `crash_at` raises: a run that dies in the middle of training."""

    def __init__(self, crash_at: int, **kw):
        super().__init__(**kw)
        self.crash_at = crash_at

    def __getitem__(self, i):
        if i == self.crash_at:
            raise RuntimeError("simulated kill")
        return super().__getitem__(i)


def test_a_killed_no_resume_run_never_reports_done_with_the_old_weights(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, log_every=1)
    old = train(_task(seed=1), TinyFaces(n=32), cfg, tmp_path, progress=False)
    assert (tmp_path / "done").exists()
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(_task(seed=2), _CrashAt(crash_at=5, n=32), cfg, tmp_path, resume=False, progress=False)
    assert not (tmp_path / "done").exists(), "--no-resume must invalidate done before training"
    assert not (tmp_path / "backbone.pth").exists() and not (tmp_path / "checkpoints" / "last.pt").exists()
    # the next (resuming) call trains again instead of handing back the old weights
    fresh = train(_task(seed=2), TinyFaces(n=32), cfg, tmp_path, progress=False)
    reference = train(_task(seed=2), TinyFaces(n=32), cfg, tmp_path / "ref", progress=False)
    for k, v in reference.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    assert any(not torch.equal(v, old.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_head_is_saved_beside_the_backbone(tmp_path):
    task = train(_task(), TinyFaces(n=32), TrainConfig(epochs=1, batch_size=16), tmp_path, progress=False)
    head = torch.load(tmp_path / "head.pth", weights_only=True)
    assert set(head) == {"fc.weight"} and torch.equal(head["fc.weight"], task.head.fc.weight.detach())
    backbone = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert not any(k.startswith("head") for k in backbone), "backbone.pth stays the student alone"


@pytest.mark.slow
def test_train_refuses_a_locked_run_directory(tmp_path):
    from test_store import hold_lock, release

    from facekd.store import DirectoryLocked

    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(DirectoryLocked, match=f"process {holder.pid}"):
            train(_task(), TinyFaces(n=32), TrainConfig(epochs=1, batch_size=16), tmp_path, progress=False)
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        release(holder)


def test_accumulating_k_micro_batches_equals_a_k_times_larger_batch(tmp_path):
    ds = TinyFaces(n=64)
    big = TrainConfig(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.5, seed=1, log_every=1)
    ref = train(_task(bn=False, dropout=0.0), ds, big, tmp_path / "big", progress=False)
    small = big.model_copy(update={"batch_size": 4, "accumulate": 4})
    acc = train(_task(bn=False, dropout=0.0), ds, small, tmp_path / "acc", progress=False)
    for k, v in ref.state_dict().items():
        assert torch.allclose(v, acc.state_dict()[k], atol=1e-6, rtol=1e-5), k
    lines = [json.loads(x) for x in (tmp_path / "acc" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9)) and lines[0]["samples_per_s"] > 0


class _HostReads:
    """Counts reads of tensor values by the host (item / float / int / bool / tolist)."""

    NAMES = ("item", "__float__", "__int__", "__bool__", "tolist")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def wrapper(t, *args, **kw):
            self.count += 1
            return original(t, *args, **kw)

        return wrapper


def test_no_host_read_between_log_steps(tmp_path, monkeypatch):
    """loss, logs and the NaN watch stay on the device: more steps, not more reads (log_every large)."""
    from facekd.embed import embed_dataset
    from facekd.losses.distiller import Distiller
    from facekd.models.heads import get_head
    from facekd.tasks import CachedTeacher

    reads = []
    for n in (64, 192):  # 8 and 24 steps in one epoch (the DataLoader reads one seed per epoch)
        ds = TinyFaces(n=n)
        torch.manual_seed(1)
        cache = embed_dataset(TinyNet(dim=5), ds, tmp_path / f"cache{n}", progress=False)
        torch.manual_seed(0)
        task = FaceTask(
            TinyNet(dim=6, bn=True),
            head=get_head("arcface", 6, 4),
            distiller=Distiller("l2", lam=1.0, student_dim=6, teacher_dim=5),
            teacher=CachedTeacher(cache),
        )
        cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, log_every=1000, amp="bf16")
        with monkeypatch.context() as m:
            counter = _HostReads(m)
            train(task, ds, cfg, tmp_path / f"run{n}", progress=False)
        reads.append(counter.count)
    assert reads[0] == reads[1], f"host reads grow with the steps: {reads} for 8 and 24 steps"


def test_amp_settings_and_records(tmp_path):
    from facekd.train.step import precision_of

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision_of(TrainConfig(amp=True), cpu) == "bf16" and precision_of(TrainConfig(amp=True), cuda) == "fp16"
    assert precision_of(TrainConfig(amp=False), cuda) == "off" and precision_of(TrainConfig(amp="bf16"), cuda) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(_task(), TinyFaces(n=32), TrainConfig(epochs=1, batch_size=16, amp="fp16"), tmp_path, progress=False)
    # settings added later are recorded only when set, so earlier runs' records still match
    dumped = TrainConfig().model_dump()
    assert not {"accumulate", "compile", "val", "num_workers", "find_unused_parameters"} & set(dumped)
    assert TrainConfig(accumulate=2, num_workers=0).model_dump()["accumulate"] == 2
    assert TrainConfig.model_validate(dumped) == TrainConfig()


def test_a_run_recorded_before_the_new_settings_is_reused(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16)
    task = train(_task(), TinyFaces(n=32), cfg, tmp_path, progress=False)
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"] |= {"num_workers": 0, "find_unused_parameters": True}  # what earlier runs recorded
    torch.save(ckpt, path)
    again = train(_task(seed=5), TinyFaces(n=32), cfg, tmp_path, progress=False)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in task.state_dict().items())


def test_loader_workers():
    from facekd.train.loader import worker_count

    assert worker_count("auto", torch.device("cpu")) == 0 and worker_count(3, torch.device("cpu")) == 3
    assert 1 <= worker_count("auto", torch.device("cuda")) <= 8


def _bins(tmp_path, ds, names=("lfw", "cfp_fp")):
    """Small `.bin` sets of TinyFaces pairs (8 × 8 RGB), written by the data layer's writer."""
    from facekd.data.binset import write_bin

    images = ((ds.images.transpose(0, 2, 3, 1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    paths = []
    for k, name in enumerate(names):
        order = np.random.default_rng(k).permutation(len(images))[:40]
        pairs = images[order]
        issame = ds.labels[order][0::2] == ds.labels[order][1::2]
        write_bin(pairs, issame, tmp_path / f"{name}.bin")
        paths.append(tmp_path / f"{name}.bin")
    return paths


def test_validation_while_training_logs_insightface_lines_and_keeps_best(tmp_path, capsys):
    import re

    ds = TinyFaces(n=64)
    bins = _bins(tmp_path, ds)
    val = {"bin": [str(p) for p in bins], "every": 4, "best_by": ["lfw"]}
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, log_every=4, val=val)
    task = train(_task(), ds, cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    printed = capsys.readouterr().out
    assert re.search(r"^\[lfw\]\[4\]XNorm: \d+\.\d{6}$", printed, re.M)
    assert re.search(r"^\[cfp_fp\]\[16\]Accuracy-Flip: \d\.\d{5}\+-\d\.\d{5}$", printed, re.M)
    log = (run / "training.log").read_text()
    speed = r"^Training: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}-Speed \d+\.\d\d samples/sec   Loss \d+\.\d{4}   "
    speed += r"LearningRate \d\.\d{6}   Epoch: \d+   Global Step: 8   Required: \d+ hours$"
    assert re.search(speed, log, re.M), log
    assert re.search(r"^Training: .*-\[lfw\]\[8\]Accuracy-Highest: \d\.\d{5}$", log, re.M)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if "val" in r]
    assert [r["step"] for r in rounds] == [4, 8, 12, 16]
    highest = [r["val"]["lfw"]["highest"] for r in rounds]
    assert highest == list(np.maximum.accumulate([r["val"]["lfw"]["accuracy_flip"] for r in rounds]))
    best = json.loads((run / "best.json").read_text())
    assert best["score"] == max(r["val"]["lfw"]["accuracy_flip"] for r in rounds)
    assert best["step"] == next(r["step"] for r in rounds if r["val"]["lfw"]["accuracy_flip"] == best["score"])
    state = torch.load(run / "best.pt", weights_only=True)
    assert set(state) == set(task.student.state_dict())
    # the same evaluation as `facekd eval --bin` on the final weights
    from facekd.evaluate.model_eval import evaluate_bin

    final = evaluate_bin(task.student, bins[1])
    assert rounds[-1]["val"]["cfp_fp"]["accuracy_flip"] == pytest.approx(final["accuracy_flip"])
    # validation settings only observe the run: changing them does not refuse the finished run
    again = cfg.model_copy(update={"val": None})
    train(_task(), ds, again, run, progress=False)


def test_tensorboard_scalars_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds = TinyFaces(n=64)
    val = {"bin": [str(p) for p in _bins(tmp_path, ds, names=("agedb_30",))], "every": 4}
    train(_task(), ds, TrainConfig(epochs=1, batch_size=8, log_every=2, val=val), tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "learning_rate", "samples_per_s", "time_for_end", "cls", "agedb_30"} <= tags
    assert [e.step for e in events.Scalars("loss")] == [2, 4, 6, 8]
