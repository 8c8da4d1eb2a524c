"""A margin head whose class centres are sharded over the ranks (PartialFC, as arcface_torch's v2).

At millions of identities the full head does not fit the step: every GPU would hold all C
centres, their gradients and momentum, all-reduce C·d gradients each step and build (B, C)
logits. `PartialFC` follows "Killing Two Birds with One Stone: Efficient and Robust Training of
Face Recognition CNNs by Partial FC" (arXiv 2203.15565) and arcface_torch's `PartialFC_V2`:

- rank r holds the centres of classes [start, start + num_local) with insightface's partition
  `num_local = C//W + (r < C%W)` (`facekd.models.checkpoint.partial_fc_partition`), as `weight`
  (num_local, d); they are never in DDP and never all-reduced;
- the embeddings (with their gradient) and labels of the whole global batch are all-gathered;
- the softmax normaliser is exact across ranks: the row maximum is all-reduced with MAX, the sum
  of exp with SUM, and the target logit (held by one rank) with SUM, so the loss equals the full
  head's cross-entropy `mean_i [max_i + log Σ_j exp(z_ij − max_i) − z_iy]` over the global batch;
- with `sample_rate` r < 1 each rank keeps every positive centre of the global batch and fills
  up with random negatives to a fixed count `max(int(r · num_local), min(num_local, B_global))`
  (a static size, so no host synchronisation; at least B_global so that no positive is dropped);
- margin, logits and loss are float32 with autocast off.

The loss returned on each rank is the global-batch mean (the same value on every rank). Its
gradient reaches the local embeddings multiplied by the world size W, as arcface_torch's
all-gather does: DDP then averages the backbone gradients over the W ranks, which gives the
gradient of the global mean. The centres receive the gradient of the global mean directly.

Initialisation: N(0, 0.01) drawn in blocks of `INIT_BLOCK` rows, block k from its own generator
seeded by (a seed drawn once from the global torch RNG, k): the same seed gives the same (C, d)
centres whatever the number of processes, and each rank draws only its own rows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from facekd import dist
from facekd.models.checkpoint import partial_fc_partition
from facekd.models.heads import MarginHead, float32_region, get_head

INIT_BLOCK = 4096  # rows per initialisation block (a class's centre does not depend on W)


class _AllGatherRows(torch.autograd.Function):
    """Concatenate equal-sized (B, ...) tensors of every rank in rank order (W·B, ...).

    Backward: the sum over ranks of the gradient of the gathered tensor, this rank's rows,
    multiplied by the world size (DDP's averaging of the backbone gradients then cancels it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.world_size())]
        tdist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        r = dist.rank()
        return grad[r * ctx.rows : (r + 1) * ctx.rows] * dist.world_size()


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` (B, ...) of every rank concatenated in rank order, with gradient (see `_AllGatherRows`);
    `x` itself in a single process. Every rank must pass the same B."""
    return _AllGatherRows.apply(x) if dist.is_distributed() else x


def _gather_labels(labels: torch.Tensor) -> torch.Tensor:
    if not dist.is_distributed():
        return labels
    parts = [torch.empty_like(labels) for _ in range(dist.world_size())]
    tdist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


def _all_reduce(x: torch.Tensor, op) -> torch.Tensor:
    if dist.is_distributed():
        tdist.all_reduce(x, op=op)
    return x


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over the rows of logits split by columns over the ranks.

    logits (N, C_local) float32 of this rank's classes; labels (N,) the column of the target on
    this rank, -1 where it lies on another rank. Returns the same scalar on every rank."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        row_max = _all_reduce(logits.max(dim=1).values, tdist.ReduceOp.MAX)
        exp = torch.exp(logits - row_max[:, None])
        total = _all_reduce(exp.sum(dim=1), tdist.ReduceOp.SUM)
        here = labels >= 0
        cols = labels.clamp(min=0)[:, None]
        target = _all_reduce(torch.where(here, logits.gather(1, cols).squeeze(1), 0.0), tdist.ReduceOp.SUM)
        ctx.save_for_backward(exp.div_(total[:, None]), cols, here)
        return (row_max + torch.log(total) - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, cols, here = ctx.saved_tensors
        g = softmax.scatter_add(1, cols, -here.to(softmax.dtype)[:, None])
        return g * (grad / softmax.shape[0]), None


class PartialFC(nn.Module):
    """ArcFace / CosFace margin softmax with sharded class centres; forward returns the loss.

    Args:
        name: "arcface" or "cosface" (a `facekd.models.heads` MarginHead; its `s`, `m`, options).
        embedding_size, num_classes: d and the global C.
        sample_rate: r in (0, 1]: share of this rank's negative centres used per step.
        rank, world_size: the shard (default: this process in the torchrun group).
    forward(embeddings (B, d) of this rank, labels (B,) global class ids) → scalar float32 loss
    (the global-batch mean; every rank must pass the same B).

    `weight` (num_local, d) holds classes [class_start, class_start + num_local). The trainer
    keeps it out of DDP and writes it as per-rank shards (`shards_over_ranks`).
    """

    shards_over_ranks = True  # the trainer: no DDP, per-rank checkpoint shards
    returns_loss = True  # the task: forward gives the classification loss, not logits

    def __init__(
        self,
        name: str,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float | None = None,
        sample_rate: float = 1.0,
        rank: int | None = None,
        world_size: int | None = None,
        **options,
    ):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"PartialFC: sample_rate must lie in (0, 1], got {sample_rate}")
        w = dist.world_size() if world_size is None else world_size
        r = dist.rank() if rank is None else rank
        self.num_classes, self.sample_rate = int(num_classes), float(sample_rate)
        self.class_start, self.num_local = partial_fc_partition(self.num_classes, w, r)
        if self.num_local < 1:
            raise ValueError(f"PartialFC: {num_classes} classes over {w} ranks leave rank {r} none")
        with torch.random.fork_rng(devices=[]):  # the formula only: its own 1-row weight draws nothing
            margin = get_head(name, embedding_size, 1, s=s, m=m, **options)
        if not isinstance(margin, MarginHead):
            raise ValueError(f"PartialFC needs a margin head (arcface, cosface), not {name!r}")
        margin.register_parameter("weight", None)  # the centres live here, sharded
        self.margin = margin
        self.weight = nn.Parameter(_initial_centres(self.num_classes, embedding_size, self.class_start, self.num_local))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Global-batch mean of the margin softmax cross-entropy (float32 scalar)."""
        self.margin._check(embeddings, labels)
        x, y = gather_rows(embeddings), _gather_labels(labels)
        local = y - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, -1)
        weight: torch.Tensor = self.weight
        if self.training and self.sample_rate < 1.0:
            index, local = self.sample(local)
            weight = weight[index]
        with float32_region(x):
            return _ShardedCrossEntropy.apply(self.margin.logits(x, local, weight), local)

    def num_sample(self, batch: int) -> int:
        """Centres used per step for a global batch of `batch` rows."""
        return min(self.num_local, max(int(self.sample_rate * self.num_local), batch))

    def sample(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted indices of the centres kept, labels re-indexed into them (-1 kept)): every
        positive of the batch plus random negatives (global torch RNG), `num_sample` in all."""
        score = torch.rand(self.num_local, device=local.device)
        here = local >= 0
        positive = torch.where(here, 2.0, 0.0).to(score.dtype)
        score.scatter_reduce_(0, local.clamp(min=0), positive, reduce="amax")
        index = torch.topk(score, self.num_sample(local.shape[0])).indices.sort().values
        return index, torch.where(here, torch.searchsorted(index, local.clamp(min=0)), -1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, class_start={self.class_start}, num_local={self.num_local}, "
            f"sample_rate={self.sample_rate}"
        )


def _initial_centres(num_classes: int, dim: int, start: int, rows: int) -> torch.Tensor:
    """Rows [start, start + rows) of the (C, d) N(0, 0.01) initial centres (see module doc)."""
    base = int(torch.randint(0, 2**62, (1,)).item())
    out = torch.empty(rows, dim)
    first, last = start // INIT_BLOCK, (start + rows - 1) // INIT_BLOCK
    for block in range(first, last + 1):
        lo, hi = block * INIT_BLOCK, min(num_classes, (block + 1) * INIT_BLOCK)
        seed = int(np.random.SeedSequence([base, block]).generate_state(1, dtype=np.uint64)[0] >> 1)
        values = torch.empty(hi - lo, dim).normal_(0, 0.01, generator=torch.Generator().manual_seed(seed))
        a, b = max(lo, start), min(hi, start + rows)
        out[a - start : b - start] = values[a - lo : b - lo]
    return out


__all__ = ["INIT_BLOCK", "PartialFC", "gather_rows"]
