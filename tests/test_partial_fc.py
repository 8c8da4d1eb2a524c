"""PartialFC (sharded margin head) against the full head, in one process and under 2 gloo processes;
its checkpoint shards resume a run on another number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TinyFaces, TinyNet

from facekd.models.checkpoint import merge_class_centres
from facekd.models.heads import get_head
from facekd.models.partial_fc import INIT_BLOCK, PartialFC
from facekd.tasks import FaceTask
from facekd.train import TrainConfig, train
from facekd.train import checkpoint as ck

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _full_reference(name, x, y, weight, **kw):
    """loss, d loss / d x, d loss / d W of the full head + mean cross-entropy."""
    head = get_head(name, x.shape[1], weight.shape[0], **kw)
    with torch.no_grad():
        head.weight.copy_(weight)
    x = x.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(head(x, y), y)
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad


@pytest.mark.parametrize("name", ["arcface", "cosface"])
def test_rate_one_equals_the_full_head_in_one_process(name):
    torch.manual_seed(0)
    pfc = PartialFC(name, 16, 37, s=32.0)
    x, y = torch.randn(24, 16), torch.randint(0, 37, (24,))
    y[:3] = 5  # repeated labels
    ref_loss, ref_gx, ref_gw = _full_reference(name, x, y, pfc.weight.detach(), s=32.0)
    xs = x.clone().requires_grad_()
    loss = pfc(xs, y)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs.grad, ref_gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pfc.weight.grad, ref_gw, rtol=1e-5, atol=1e-5)


def test_loss_is_float32_and_unchanged_under_bf16_autocast():
    torch.manual_seed(1)
    pfc = PartialFC("arcface", 8, 20)
    x, y = torch.randn(10, 8), torch.randint(0, 20, (10,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = pfc(x, y)
    assert mixed.dtype == torch.float32
    assert abs(float(mixed.detach()) - float(pfc(x, y).detach())) < 1e-6


def test_sampling_keeps_every_positive_and_equals_cross_entropy_on_the_kept_centres():
    torch.manual_seed(2)
    pfc = PartialFC("cosface", 8, 200, sample_rate=0.1)
    x, y = torch.randn(12, 8), torch.randint(0, 200, (12,))
    assert pfc.num_sample(12) == 20
    torch.manual_seed(5)
    index, local = pfc.sample(y)
    assert index.numel() == 20 and torch.equal(index, index.sort().values)
    assert set(y.tolist()) <= set(index.tolist()) and torch.equal(index[local], y)
    torch.manual_seed(5)
    loss = pfc(x, y)  # draws the same negatives
    ref, _, _ = _full_reference("cosface", x, local, pfc.weight.detach()[index])
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-5)
    # fewer centres than the batch would hold: the batch size is the floor, so no positive is dropped
    assert PartialFC("arcface", 8, 200, sample_rate=0.01).num_sample(12) == 12
    pfc.eval()
    assert torch.allclose(pfc(x, y), _full_reference("cosface", x, y, pfc.weight.detach())[0], rtol=1e-5)


def test_initial_centres_do_not_depend_on_the_number_of_processes():
    rows = []
    for world in (1, 2, 3):
        parts = []
        for rank in range(world):
            torch.manual_seed(4)
            parts.append(PartialFC("arcface", 4, 2 * INIT_BLOCK + 7, rank=rank, world_size=world).weight.detach())
        rows.append(torch.cat(parts))
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2])
    assert abs(float(rows[0].std()) - 0.01) < 5e-4
    with pytest.raises(ValueError, match="margin head"):
        PartialFC("softmax", 4, 10)
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC("arcface", 4, 10, sample_rate=0.0)


def _sharded_task(seed, classes, rank=None, world=None):
    torch.manual_seed(seed)
    return FaceTask(TinyNet(dim=6), head=PartialFC("arcface", 6, classes, s=16.0, rank=rank, world_size=world))


def test_checkpoint_centres_load_into_any_split_and_into_a_full_head(tmp_path):
    """Shards of 3 ranks → a task of rank 1 of 2, a task of 1 process, and a full ArcFace head."""
    classes, saved = 11, _sharded_task(0, 11, 0, 1)
    full = saved.head.weight.detach().clone()
    folder = tmp_path / "checkpoints" / "shards" / "step000000005" / "head"
    for r in range(3):
        start, n = ck.partial_fc_partition(classes, 3, r)
        torch.save({"weight": full[start : start + n], "momentum": -full[start : start + n]}, _mk(folder, r))
    state = {k: v for k, v in saved.state_dict().items() if k != "head.weight"}
    shards = {"folder": "shards/step000000005", "world_size": 3, "modules": {"head": classes}}
    ckpt = {"task": state, "shards": shards, "optimizer": None}
    assert torch.equal(merge_class_centres(sorted(folder.iterdir()), classes), full)
    half = _sharded_task(1, classes, 1, 2)
    ck.load_task_state(half, ckpt, tmp_path)
    assert torch.equal(half.head.weight.detach(), full[6:])
    whole = _sharded_task(2, classes, 0, 1)
    ck.load_task_state(whole, ckpt, tmp_path)
    assert torch.equal(whole.head.weight.detach(), full)
    torch.manual_seed(3)
    plain = FaceTask(TinyNet(dim=6), head=get_head("arcface", 6, classes, s=16.0))
    ck.load_task_state(plain, ckpt, tmp_path)
    assert torch.equal(plain.head.weight.detach(), full)
    # and a full head's checkpoint splits into shards
    ck.load_task_state(half, {"task": plain.state_dict(), "optimizer": None}, tmp_path)
    assert torch.equal(half.head.weight.detach(), full[6:])


def _mk(folder: Path, r: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"rank_{r}_softmax_weight.pt"


class _StopAfter(TinyFaces):
    """TinyFaces that raises once `stop_after` items were read in this process (a killed run)."""

    def __init__(self, stop_after: int, **kw):
        super().__init__(**kw)
        self.stop_after, self.read = stop_after, 0

    def __getitem__(self, i):
        self.read += 1
        if self.read > self.stop_after:
            raise RuntimeError("simulated kill")
        return super().__getitem__(i)


_CFG = dict(epochs=2, batch_size=4, lr=0.05, warmup_epochs=0.5, seed=1, log_every=1, checkpoint_every=3)

_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from conftest import TinyFaces, TinyNet
    from test_partial_fc import _StopAfter, _full_reference, _sharded_task, _CFG
    from facekd import dist
    from facekd.models.heads import get_head
    from facekd.models.partial_fc import PartialFC
    from facekd.tasks import FaceTask
    from facekd.train import TrainConfig, train
    from facekd.train import checkpoint as ck
    out, mode = sys.argv[1], sys.argv[2]
    dist.init_from_env()
    rank, world = dist.rank(), dist.world_size()
    if mode == "head":
        # the whole batch and the full head on every rank; each rank passes its rows and its centres
        torch.manual_seed(0)
        x, y, w = torch.randn(8, 6), torch.randint(0, 7, (8,)), 0.3 * torch.randn(7, 6)
        ref_loss, ref_gx, ref_gw = _full_reference("arcface", x, y, w, s=16.0)
        pfc = PartialFC("arcface", 6, 7, s=16.0)
        with torch.no_grad():
            pfc.weight.copy_(w[pfc.class_start : pfc.class_start + pfc.num_local])
        mine = x[4 * rank : 4 * rank + 4].clone().requires_grad_()
        loss = pfc(mine, y[4 * rank : 4 * rank + 4])
        loss.backward()
        torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-5)
        # the local embeddings get world × the gradient of the global mean (DDP averages it back)
        torch.testing.assert_close(mine.grad / world, ref_gx[4 * rank : 4 * rank + 4], rtol=1e-5, atol=1e-5)
        mine_w = ref_gw[pfc.class_start : pfc.class_start + pfc.num_local]
        torch.testing.assert_close(pfc.weight.grad, mine_w, rtol=1e-5, atol=1e-5)
        # training: the sharded head on 2 × 8 equals the full head on 16 (same initial centres)
        task = _sharded_task(0, 5)
        init = torch.cat([_sharded_task(0, 5, r, world).head.weight.detach() for r in range(world)])
        cfg = TrainConfig(**{{**_CFG, "batch_size": 8, "checkpoint_every": 0}})
        task = train(task, TinyFaces(n=64, num_classes=5), cfg, out + "/ddp", progress=False)
        torch.save({{"student": task.student.state_dict(), "init": init}}, f"{{out}}/ddp/rank{{rank}}.pt")
    elif mode == "stop":
        task = _sharded_task(0, 5)
        train(task, _StopAfter(28, n=64, num_classes=5), TrainConfig(**_CFG), out, progress=False)
    else:  # resume what a run of another world size left
        probe = _sharded_task(9, 5)
        ckpt = ck.load_checkpoint(out + "/checkpoints/last.pt")
        ck.load_task_state(probe, ckpt, Path(out))
        task = train(_sharded_task(0, 5), TinyFaces(n=64, num_classes=5), TrainConfig(**_CFG), out, progress=False)
        probe_rows = {{"start": probe.head.class_start, "rows": probe.head.weight.tolist()}}
        Path(f"{{out}}/probe{{rank}}.json").write_text(json.dumps(probe_rows))
""")


def _torchrun(tmp_path, out, mode, check=True):
    script = tmp_path / "pfc_script.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{TESTS}", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(out),
        mode,
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_two_gloo_processes_equal_the_full_head(tmp_path):
    _torchrun(tmp_path, tmp_path, "head")
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["student"].items():
        assert torch.equal(v, r1["student"][k]), f"ranks disagree on {k}"
    torch.manual_seed(0)
    single = FaceTask(TinyNet(dim=6), head=get_head("arcface", 6, 5, s=16.0))
    with torch.no_grad():
        single.head.weight.copy_(r0["init"])
    cfg = TrainConfig(**{**_CFG, "batch_size": 16, "checkpoint_every": 0})
    single = train(single, TinyFaces(n=64, num_classes=5), cfg, tmp_path / "single", progress=False)
    for k, v in single.student.state_dict().items():
        torch.testing.assert_close(v, r0["student"][k], rtol=1e-5, atol=1e-6)
    head = torch.load(tmp_path / "ddp" / "head.pth", weights_only=True)
    torch.testing.assert_close(head["weight"], single.head.weight.detach(), rtol=1e-5, atol=1e-6)


def _last_rows(run_dir: Path, classes: int) -> torch.Tensor:
    ckpt = ck.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    folder = run_dir / "checkpoints" / ckpt["shards"]["folder"] / "head"
    return merge_class_centres(folder, classes)


@pytest.mark.slow
def test_a_run_of_two_processes_resumes_in_one_and_the_reverse(tmp_path):
    two = tmp_path / "two"
    res = _torchrun(tmp_path, two, "stop", check=False)
    assert res.returncode != 0 and "simulated kill" in res.stdout + res.stderr
    ckpt = ck.load_checkpoint(two / "checkpoints" / "last.pt")
    assert ckpt["step"] == 6 and ckpt["shards"]["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    saved = _last_rows(two, 5)
    probe = _sharded_task(9, 5)
    ck.load_task_state(probe, ckpt, two)
    assert torch.equal(probe.head.weight.detach(), saved)
    task = train(_sharded_task(0, 5), TinyFaces(n=64, num_classes=5), TrainConfig(**_CFG), two, progress=False)
    assert (two / "done").exists() and torch.load(two / "head.pth", weights_only=True)["weight"].shape == (5, 6)
    steps = [json.loads(x)["step"] for x in (two / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert steps == [*range(1, 7), *range(13, 33)], "2 × 6 steps of batch 4 = 12 steps of one process"
    assert task.head.num_local == 5

    one = tmp_path / "one"
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(_sharded_task(0, 5), _StopAfter(28, n=64, num_classes=5), TrainConfig(**_CFG), one, progress=False)
    saved = _last_rows(one, 5)
    _torchrun(tmp_path, one, "resume")
    for r in (0, 1):
        probe = json.loads((one / f"probe{r}.json").read_text())
        rows = torch.tensor(probe["rows"])
        assert torch.equal(rows, saved[probe["start"] : probe["start"] + len(rows)])
    assert (one / "done").exists()


def _run_config(tmp_path, **head):
    import numpy as np

    from facekd.config import RunConfig

    g = np.random.default_rng(0)
    labels = np.arange(48) % 4
    np.savez(tmp_path / "data.npz", images=g.integers(0, 255, (48, 16, 16, 3)).astype(np.uint8), labels=labels)
    return RunConfig.model_validate(
        {
            "data": {"kind": "arrays", "path": str(tmp_path / "data.npz")},
            "model": {"arch": "mbf_tiny", "embedding_size": 16},
            "head": {"name": "arcface", **head},
            "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
            "run_dir": str(tmp_path / "run"),
        }
    )


@pytest.mark.slow
def test_run_config_chooses_the_head(tmp_path):
    from facekd.build import build_head, head_sharding, run_training

    auto = _run_config(tmp_path)
    assert head_sharding(auto, 4) == (False, 1.0) and head_sharding(auto, 93_431) == (False, 1.0)
    assert head_sharding(auto, 360_232) == (True, 0.3), "above 100k classes: sharded, rate 0.3"
    assert not isinstance(build_head(auto, 16, 4), PartialFC)
    forced = _run_config(tmp_path, sharded=True, sample_rate=0.5)
    assert isinstance(build_head(forced, 16, 40), PartialFC) and build_head(forced, 16, 40).sample_rate == 0.5
    assert auto.model_dump()["head"] == {"name": "arcface", "s": 64.0, "m": None, "options": {}}
    with pytest.raises(ValueError, match="needs the sharded head"):
        head_sharding(_run_config(tmp_path, sharded=False, sample_rate=0.5), 4)
    focal = _run_config(tmp_path, sharded=True)
    focal = type(focal).model_validate(focal.model_dump() | {"cls_loss": {"name": "focal"}})
    with pytest.raises(ValueError, match="cross-entropy, not cls_loss focal"):
        head_sharding(focal, 4)
    with pytest.raises(ValueError, match="sample_rate"):
        _run_config(tmp_path, sample_rate=1.5)
    # a sharded run from its config: head.pth holds the merged (C, d) centres, read as a teacher head
    task = run_training(forced, progress=False)
    assert isinstance(task.head, PartialFC)
    head = torch.load(forced.run_dir / "head.pth", weights_only=True)
    assert torch.equal(head["weight"], task.head.weight.detach().cpu())
