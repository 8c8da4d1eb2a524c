"""Checkpoints of a run: `checkpoints/last.pt` (rank 0) and the class-centre shards of a sharded
head (one file per rank), RNG states, and loading them into a task of any number of processes.

Layout (all written atomically):

    checkpoints/last.pt                     task (without sharded centres), optimizer (idem),
                                            scaler, position, RNG states of every rank,
                                            config, run identity, "shards" (folder + world size)
    checkpoints/shards/step<S>/<module>/rank_<r>_softmax_weight.pt
                                            {"weight": (num_local, d), "momentum": (num_local, d)}
                                            insightface's PartialFC file name and partition, so
                                            `facekd.models.checkpoint.merge_class_centres` reads them

Every rank writes its shard under the step's folder, then rank 0 writes last.pt naming that
folder and removes the older ones: a kill at any point leaves a last.pt whose shards exist.

Class centres load into whichever head the resumed run builds: a sharded head reads only its
rows [start, start + num_local) from the shards (or from the full (C, d) weight of a run made
with the full head), a full head gets the shards concatenated. So a run resumes on another
number of processes, and with or without sharding.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facekd import dist
from facekd.models.checkpoint import partial_fc_partition
from facekd.utils import atomic_path, load_torch

CHECKPOINT = Path("checkpoints") / "last.pt"
SHARDS = Path("checkpoints") / "shards"
REQUIRED = frozenset({"task", "optimizer", "step", "epoch", "batch_in_epoch", "rng", "config"})


# --------------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy (legacy global) and python RNG states, as tensors and plain data."""
    np_state: Any = np.random.get_state()  # the legacy tuple (name, keys, pos, has_gauss, gauss)
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_process(seed: int) -> None:
    """Seed the global torch / numpy / python RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_states_of_all_ranks() -> list[dict]:
    """Every rank's RNG state, in rank order (a collective under torchrun)."""
    mine = rng_state()
    if not dist.is_distributed():
        return [mine]
    out: list[Any] = [None] * dist.world_size()
    torch.distributed.all_gather_object(out, mine)
    return out


def restore_rng(ckpt: dict, seed: int, step: int) -> None:
    """This rank's saved RNG state; on another number of processes (or a rank that did not exist)
    a fresh seed from (seed, rank, step)."""
    states = ckpt.get("rng_ranks") or [ckpt["rng"]] * dist.world_size()
    if len(states) == dist.world_size():
        set_rng_state(states[dist.rank()])
    else:
        seed_process(int(np.random.SeedSequence([seed, dist.rank(), step]).generate_state(1)[0]))


# --------------------------------------------------------------------------------------------
# last.pt
# --------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict:
    """Load a train() checkpoint (weights_only=True) with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = load_torch(path, "training checkpoint")
    missing = REQUIRED - set(ckpt) if isinstance(ckpt, dict) else REQUIRED
    if missing:
        raise ValueError(f"{path}: not a facekd training checkpoint (missing {sorted(missing)})")
    return ckpt


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


# --------------------------------------------------------------------------------------------
# sharded class centres
# --------------------------------------------------------------------------------------------


def sharded_modules(task: nn.Module) -> dict[str, nn.Module]:
    """The task's modules whose `weight` rows are split over the ranks (`shards_over_ranks`)."""
    return {name: m for name, m in task.named_modules() if getattr(m, "shards_over_ranks", False)}


def num_classes_of(module: nn.Module) -> int:
    """C of a head (its `num_classes`)."""
    n = getattr(module, "num_classes", None)
    if not isinstance(n, int):
        raise TypeError(f"{type(module).__name__} has no int num_classes")
    return n


def sharded_keys(task: nn.Module) -> set[str]:
    """state_dict / parameter names of the sharded centres (kept out of DDP and of last.pt)."""
    return {f"{name}.weight" for name in sharded_modules(task)}


def _trainable_names(task: nn.Module) -> list[str]:
    """Parameter names in the optimizer's order (train() optimizes these, in this order)."""
    return [n for n, p in task.named_parameters() if p.requires_grad]


def replicated_state(task: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """(task state_dict, optimizer state_dict) without the sharded centres and their momentum."""
    keys = sharded_keys(task)
    state = {k: v for k, v in task.state_dict().items() if k not in keys}
    if optimizer is None:
        return state, None
    opt = optimizer.state_dict()
    drop = {i for i, name in enumerate(_trainable_names(task)) if name in keys}
    opt["state"] = {i: s for i, s in opt["state"].items() if i not in drop}
    return state, opt


def _momentum(optimizer: torch.optim.Optimizer, p: nn.Parameter) -> torch.Tensor | None:
    return optimizer.state.get(p, {}).get("momentum_buffer")


def write_shards(run_dir: Path, step: int, task: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """Every rank: its rows of each sharded module (and their momentum) under shards/step<S>/.
    Returns that folder relative to `checkpoints/` (None without sharded modules)."""
    modules = sharded_modules(task)
    if not modules:
        return None
    folder = Path("shards") / f"step{step:09d}"
    for name, m in modules.items():
        weight = m.get_parameter("weight")
        shard = {"weight": weight.detach().cpu()}
        mom = _momentum(optimizer, weight)
        if mom is not None:
            shard["momentum"] = mom.detach().cpu()
        with atomic_path(run_dir / "checkpoints" / folder / name / f"rank_{dist.rank()}_softmax_weight.pt") as tmp:
            torch.save(shard, tmp)
    return str(folder)


def remove_old_shards(run_dir: Path, keep: str | None) -> None:
    """Rank 0, after last.pt names `keep`: the shard folders of earlier checkpoints."""
    root = run_dir / SHARDS
    if root.is_dir():
        for d in root.iterdir():
            if keep is None or d.name != Path(keep).name:
                shutil.rmtree(d, ignore_errors=True)


@dataclass
class _Centres:
    """Where a checkpoint holds the centres of one head: shards of `world` ranks, or full tensors."""

    num_classes: int
    folder: Path | None = None
    world: int = 1
    full: dict[str, torch.Tensor | None] | None = None

    def rows(self, what: str, start: int, stop: int) -> torch.Tensor | None:
        """Rows [start, stop) of "weight" or "momentum" (None if the checkpoint has no momentum)."""
        if self.full is not None:
            t = self.full.get(what)
            return None if t is None else t[start:stop]
        assert self.folder is not None
        parts = []
        for r in range(self.world):
            first, n = partial_fc_partition(self.num_classes, self.world, r)
            lo, hi = max(first, start), min(first + n, stop)
            if lo < hi:
                t = _shard_part(self.folder / f"rank_{r}_softmax_weight.pt", what, n)
                if t is None:
                    return None
                parts.append(t[lo - first : hi - first])
        return torch.cat(parts)


def _shard_part(path: Path, what: str, rows: int) -> torch.Tensor | None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class-centre shard missing (the checkpoint names it)")
    shard = load_torch(path, "class-centre shard", mmap=True)
    t = shard.get(what) if isinstance(shard, dict) else None
    if what == "weight" and (not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] != rows):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{path}: expected a 'weight' of {rows} rows (the partition of its rank), got {got}")
    return t


def _centres_in(ckpt: dict, run_dir: Path, name: str, num_classes: int, opt_index: dict[str, int]) -> _Centres:
    """The centres of module `name` in `ckpt`: its shards, else its full weight (and momentum)."""
    shards = ckpt.get("shards") or {}
    if shards.get("folder") and name in shards.get("modules", {}):
        return _Centres(num_classes, run_dir / "checkpoints" / shards["folder"] / name, int(shards["world_size"]))
    key = f"{name}.weight"
    weight = ckpt["task"].get(key)
    if weight is None:
        raise ValueError(f"checkpoint has neither shards nor a full weight for {key}")
    state = ckpt["optimizer"]["state"].get(opt_index.get(key, -1), {}) if ckpt.get("optimizer") else {}
    return _Centres(num_classes, full={"weight": weight, "momentum": state.get("momentum_buffer")})


def _load_centres(task, ckpt, run_dir, optimizer) -> tuple[dict, dict | None, dict]:
    """(task state, optimizer state, {param: momentum rows}) with every centre matrix moved between
    the checkpoint's layout (shards or full) and the task's (sharded modules or full heads)."""
    state = dict(ckpt["task"])
    opt = ckpt.get("optimizer") if optimizer is not None else None
    names = _trainable_names(task)
    index = {n: i for i, n in enumerate(names)}
    saved = set((ckpt.get("shards") or {}).get("modules", {}))
    sharded = sharded_modules(task)
    momenta: dict[nn.Parameter, torch.Tensor] = {}
    for name in saved | set(sharded):
        module = task.get_submodule(name)
        num_classes = num_classes_of(module)
        centres = _centres_in(ckpt, run_dir, name, num_classes, index)
        key = f"{name}.weight"
        start, stop = (
            (module.class_start, module.class_start + module.num_local) if name in sharded else (0, num_classes)
        )
        weight, mom = centres.rows("weight", start, stop), centres.rows("momentum", start, stop)
        if name in sharded:
            state.pop(key, None)
            with torch.no_grad():
                module.weight.copy_(weight)
            if mom is not None:
                momenta[module.weight] = mom
        else:
            state[key] = weight
            if opt is not None and mom is not None and key in index:
                opt = {**opt, "state": {**opt["state"], index[key]: {"momentum_buffer": mom}}}
        if opt is not None and name in sharded and key in index:
            opt = {**opt, "state": {i: s for i, s in opt["state"].items() if i != index[key]}}
    return state, opt, momenta


def load_task_state(task: nn.Module, ckpt: dict, run_dir: Path, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load `ckpt` (last.pt of any number of processes) into `task` (and `optimizer`): the
    replicated state as saved, the class centres re-split for this task's heads and ranks."""
    state, opt, momenta = _load_centres(task, ckpt, run_dir, optimizer)
    missing, unexpected = task.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in sharded_keys(task)]
    if missing or unexpected:
        raise ValueError(
            f"{run_dir / CHECKPOINT}: task state does not match (missing {missing}, unexpected {unexpected})"
        )
    if optimizer is not None and opt is not None:
        optimizer.load_state_dict(opt)
        for p, mom in momenta.items():
            optimizer.state[p]["momentum_buffer"] = mom.to(p.device, p.dtype).clone()


__all__ = [
    "CHECKPOINT",
    "SHARDS",
    "load_checkpoint",
    "load_task_state",
    "num_classes_of",
    "remove_old_shards",
    "replicated_state",
    "restore_rng",
    "rng_state",
    "rng_states_of_all_ranks",
    "seed_process",
    "set_rng_state",
    "sharded_keys",
    "sharded_modules",
    "trim_metrics",
    "write_shards",
]
