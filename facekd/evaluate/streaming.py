"""TAR at FAR ≤ target over all-to-all pair sets too large to materialise (ICCV21-MFR style).

MR-All scores 1.6M images all-to-all: 2.6·10¹² impostor pairs, TAR at FAR ≤ 1e-6. Sorting all
scores is out of the question; this module finds the exact strict threshold in two streaming
passes over (chunk × chunk) blocks of the cosine-similarity matrix (torch matmuls, any device):

1. histogram every impostor score into `nbins` equal bins over [-1, 1] (int64 counts) and keep
   the genuine scores (there are few: Σ n_id²);
2. for each target, the bin holding the (k+1)-th largest impostor score (k = floor(FAR·|I|)) is
   known from the histogram; re-scan and keep only the scores that fall in those boundary bins,
   then pick the exact (k+1)-th largest inside them.

The threshold and TAR are the "strict" convention of `verification.tar_at_far` (accept s > τ,
at most k impostors accepted, tie-safe), so on small N the result equals
`tar_at_far(all_pair_scores, issame, convention="strict")` up to float32 rounding of the scores.

Pair sets: without `other`, the unordered pairs i < j of one set (the full N×N matrix minus the
diagonal counts every pair twice, which leaves the strict threshold and TAR unchanged:
ceil((floor(2x)+1)/2) = floor(x)+1); with `other`, every (i, j) of set × other (the
mask→non-mask protocol).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from facekd import dist
from facekd.evaluate.verification import TarAtFar
from facekd.utils import check_embeddings


@dataclass
class StreamingResult:
    """Strict TAR@FAR points plus counts and throughput (pairs scored per second, both passes)."""

    tar_at_far: list[TarAtFar]
    n_genuine: int
    n_impostor: int
    seconds: float
    pairs_per_second: float
    nbins: int
    boundary_counts: list[int] = field(default_factory=list)  # impostors kept in each boundary bin

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tar_at_far"] = [t.to_dict() for t in self.tar_at_far]
        return d


def _prepare(x, labels, name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    e = check_embeddings(x, name, require_unit=True)
    y = np.asarray(labels)
    if y.shape != (e.shape[0],):
        raise ValueError(f"{name}: labels have shape {y.shape}, expected ({e.shape[0]},)")
    return torch.from_numpy(e).to(device), torch.from_numpy(y.astype(np.int64)).to(device)


def _scan(a, ya, b, yb, symmetric: bool, chunk: int, fn: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Call fn(scores (m,), is_genuine (m,)) for every pair block of this rank; symmetric → only i < j.

    Row blocks are dealt round-robin to the torch.distributed ranks (all of them in one process).
    """
    na, nb = a.shape[0], b.shape[0]
    r, w = dist.rank(), dist.world_size()
    for i0 in range(r * chunk, na, w * chunk):
        ai, yi = a[i0 : i0 + chunk], ya[i0 : i0 + chunk]
        for j0 in range(i0 if symmetric else 0, nb, chunk):
            s = ai @ b[j0 : j0 + chunk].T
            same = yi[:, None] == yb[None, j0 : j0 + chunk]
            if symmetric and j0 == i0:
                upper = torch.ones_like(same).triu_(1)
                fn(s[upper], same[upper])
            else:
                fn(s.reshape(-1), same.reshape(-1))


def _gather(parts: list[torch.Tensor], device, dtype=torch.float32) -> torch.Tensor:
    """Concatenate this rank's CPU pieces, then across ranks (rank order); returns a CPU tensor."""
    x = torch.cat(parts) if parts else torch.empty(0, dtype=dtype)
    if dist.is_distributed():
        x = dist.all_gather_cat(x.to(device)).cpu()
    return x


def _inputs(embeddings, labels, other, other_labels, device):
    """(a, ya, b, yb, symmetric) on `device`: the set, and the set it is scored against."""
    a, ya = _prepare(embeddings, labels, "embeddings", device)
    if other is None:
        return a, ya, a, ya, True
    if other_labels is None:
        raise ValueError("other_labels is required with other")
    b, yb = _prepare(other, other_labels, "other", device)
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"other is {b.shape[1]}-d but embeddings are {a.shape[1]}-d")
    return a, ya, b, yb, False


def _to_bin(s: torch.Tensor, nbins: int) -> torch.Tensor:
    return ((s + 1.0) * (nbins / 2.0)).long().clamp_(0, nbins - 1)


def _pass1(scan: Callable, nbins: int, device) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: (genuine scores float64 (G,), impostor histogram int64 (nbins,)), all ranks combined."""
    hist = torch.zeros(nbins, dtype=torch.int64, device=device)
    genuine: list[torch.Tensor] = []

    def visit(s, same):
        g = s[same]
        genuine.append(g.cpu())
        # impostor histogram = all scores minus the (few) genuine ones: avoids gathering s[~same]
        hist.add_(torch.bincount(_to_bin(s, nbins), minlength=nbins)).sub_(
            torch.bincount(_to_bin(g, nbins), minlength=nbins)
        )

    scan(visit)
    gen = _gather(genuine, device).double().numpy()
    if dist.is_distributed():
        torch.distributed.all_reduce(hist)
    return gen, hist.cpu().numpy()


def _pass2(scan: Callable, wanted: list[int], nbins: int, device) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: the impostor scores that fall in the `wanted` bins → (values float64, their bins int64)."""
    kept_vals: list[torch.Tensor] = []
    kept_bins: list[torch.Tensor] = []
    if wanted:
        wanted_t = torch.tensor(wanted, device=device)
        floor = wanted[0] / (nbins / 2.0) - 1.0 - 1e-6  # below the lowest wanted bin: a cheap pre-filter

        def visit(s, same):
            imp = s[(s >= floor) & ~same]
            bi = _to_bin(imp, nbins)
            sel = torch.isin(bi, wanted_t)
            kept_vals.append(imp[sel].cpu())
            kept_bins.append(bi[sel].cpu())

        scan(visit)
    return _gather(kept_vals, device).double().numpy(), _gather(kept_bins, device, torch.int64).numpy()


def _threshold_in_bin(kv, kb, hist, tail, k: int, bb: int) -> tuple[float, int]:
    """(τ = the (k+1)-th largest impostor, #impostors > τ) from the scores kept in bin bb."""
    vals = kv[kb == bb]
    if vals.size != hist[bb]:
        raise RuntimeError(
            f"bin {bb}: pass 2 saw {vals.size} scores, pass 1 counted {hist[bb]} "
            "(non-deterministic matmul on this device?)"
        )
    above = int(tail[bb + 1]) if bb + 1 < hist.size else 0
    r = k - above  # 0-based rank of τ inside the bin, descending
    tau = float(np.partition(vals, vals.size - 1 - r)[vals.size - 1 - r])
    return tau, above + int(np.count_nonzero(vals > tau))


def streaming_tar_at_far(
    embeddings,
    labels,
    fars: Sequence[float] = (1e-6, 1e-5, 1e-4),
    *,
    other=None,
    other_labels=None,
    chunk: int = 4096,
    nbins: int = 1 << 20,
    device: str | torch.device | None = None,
) -> StreamingResult:
    """Exact strict TAR at FAR ≤ each target over all pairs, without materialising them.

    embeddings (N, d), labels (N,) identity per row; `other` (M, d) / `other_labels` (M,) switch
    to the bipartite set × other protocol. Cosine scores (rows L2-normalised, float32 matmul on
    `device`, default CUDA when available). Memory: chunk² scores per block plus the kept genuine
    and boundary-bin scores. Under torch.distributed every rank calls this with the same inputs;
    row blocks are split across ranks and the counts combined (the device must suit the backend:
    CUDA for NCCL), every rank gets the result.
    """
    for far in fars:
        if not 0.0 < far <= 1.0:
            raise ValueError(f"target FAR must be in (0, 1], got {far}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a, ya, b, yb, symmetric = _inputs(embeddings, labels, other, other_labels, device)
    scan = functools.partial(_scan, a, ya, b, yb, symmetric, chunk)  # scan(fn): fn on every pair block
    t0 = time.perf_counter()
    gen, hist = _pass1(scan, nbins, device)
    n_imp = int(hist.sum())
    if gen.size == 0 or n_imp == 0:
        raise ValueError(f"need both genuine and impostor pairs, got {gen.size} genuine, {n_imp} impostor")
    tail = np.cumsum(hist[::-1])[::-1]  # tail[b] = #impostors in bins ≥ b
    ks = [math.floor(round(far * n_imp, 9)) for far in fars]
    # bin holding the (k+1)-th largest impostor: the last b with tail[b] > k
    bins = [int(np.count_nonzero(tail > k)) - 1 if k < n_imp else -1 for k in ks]
    kv, kb = _pass2(scan, sorted({bb for bb in bins if bb >= 0}), nbins, device)
    seconds = time.perf_counter() - t0

    out, counts = [], []
    for far, k, bb in zip(fars, ks, bins):
        if bb < 0:  # k ≥ |I|: everything accepted
            tau, n_above = -math.inf, n_imp
        else:
            tau, n_above = _threshold_in_bin(kv, kb, hist, tail, k, bb)
            counts.append(int(hist[bb]))
        tar = float(np.mean(gen > tau))
        out.append(TarAtFar(float(far), tar, tau, n_above / n_imp, int(gen.size), n_imp, float(far) * n_imp, "strict"))
    n_pairs = gen.size + n_imp
    return StreamingResult(out, int(gen.size), n_imp, seconds, 2 * n_pairs / max(seconds, 1e-12), nbins, counts)
