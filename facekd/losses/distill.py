"""Distillation losses that return one value per sample (or per sample and dimension).

Every loss here is *unreduced*: it returns either

- an **elementwise** tensor ``(B, D)`` of squared regression errors (L2, FitNet, AT; VID's Gaussian
  NLL) that a weighting reduces over dimensions (sum or mean) and over the batch — PAD needs this
  form, because its variance is per dimension; or
- a **per-sample** tensor ``(B,)`` (cosine, HKD, and the relation losses, whose per-sample value is
  the contribution of sample i as the *anchor* of its row of the B×B relation matrix, so that the
  batch mean of the per-sample values equals the original batch-level loss unless said otherwise).

Paper references are given in each docstring. Losses with parameters (FitNet's regressor, VID's
regressor and variance) are `nn.Module`s; `facekd.losses.distiller.Distiller` owns them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Features",
    "FitNetHint",
    "VIDLoss",
    "at_elements",
    "attention_map",
    "cc_loss",
    "cosine_loss",
    "darkrank_loss",
    "hkd_loss",
    "l2_elements",
    "match_spatial",
    "pkt_loss",
    "rkd_loss",
    "sp_loss",
]


@dataclass
class Features:
    """What a network hands to the distiller for one batch.

    embedding: (B, d) raw embedding (the distiller normalises it when asked).
    maps: optional list of stage feature maps (B, C_l, H_l, W_l), shallow to deep (FitNet, AT).
    logits: optional (B, C) class logits (HKD). A face student's logits come from its margin head;
        a cached teacher has none, so HKD needs an online teacher with a head.
    """

    embedding: torch.Tensor
    maps: list[torch.Tensor] | None = None
    logits: torch.Tensor | None = None


def _check_pair(s: torch.Tensor, t: torch.Tensor, name: str) -> None:
    if s.shape != t.shape:
        raise ValueError(f"{name}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}")


def l2_elements(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Squared error per sample and dimension: (B, D), (B, D) → (B, D) = (s - t)²."""
    _check_pair(s, t, "l2")
    return (s - t).pow(2)


def cosine_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cosine distance per sample: (B, D), (B, D) → (B,) = 1 − cos(s, t) ∈ [0, 2]."""
    _check_pair(s, t, "cosine")
    return 1.0 - F.cosine_similarity(s, t, dim=1)


def hkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    """Hinton KD (Hinton et al. 2015): T² · KL(softmax(t/T) ‖ softmax(s/T)) per sample, (B, C) → (B,).

    The T² factor keeps the gradient scale independent of T (as in the paper).
    """
    _check_pair(student_logits, teacher_logits, "hkd")
    if T <= 0:
        raise ValueError(f"hkd: temperature T must be > 0, got {T}")
    log_ps = F.log_softmax(student_logits / T, dim=1)
    log_pt = F.log_softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=1) * (T * T)


def match_spatial(student_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a student map (B, C, H, W) to the teacher's (H_t, W_t) when they differ."""
    if tuple(student_map.shape[-2:]) == tuple(size):
        return student_map
    return F.interpolate(student_map, size=size, mode="bilinear", align_corners=False)


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Activation-based spatial attention (Zagoruyko & Komodakis 2017): (B, C, H, W) → (B, H·W).

    a = normalize(mean_c |F_c|^p) with the L2 norm over positions, as in the authors' code
    (``F.normalize(x.pow(2).mean(1).view(B, -1))`` for p = 2).
    """
    if f.dim() != 4:
        raise ValueError(f"attention_map expects (B, C, H, W), got {tuple(f.shape)}")
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_elements(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT loss per sample and position: (B, C_s, H, W), (B, C_t, H', W') → (B, H'·W').

    The elementwise squared difference of the attention maps; the authors' code takes the mean of
    it (dim_reduce="mean" reproduces that exactly). The student map is resized to the teacher's
    spatial size when they differ.
    """
    fs = match_spatial(fs, ft.shape[-2:])
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2)


class FitNetHint(nn.Module):
    """FitNet hint (Romero et al. 2015): 1×1 conv + BN regressor, student map → teacher channels.

    forward(fs (B, C_s, H, W), ft (B, C_t, H', W')) → (regressed map (B, C_t, H', W'),
    elementwise squared error (B, C_t·H'·W')). The regressed map is what PAD's 1×1-conv variance
    branch reads.
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.reg = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(teacher_channels),
        )

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.reg(match_spatial(fs, ft.shape[-2:]))
        _check_pair(r, ft, "fitnet (regressed student map vs teacher map)")
        return r, (r - ft).pow(2).flatten(1)


def _pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances (B, B) with an exact zero diagonal (RKD authors' `pdist`)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * e @ e.t()).clamp(min=eps)
    d = d2 if squared else d2.sqrt()
    return d * (1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _rkd_angles(e: torch.Tensor) -> torch.Tensor:
    """(B, D) → (B, B, B): [i, j, k] = cos of the angle at anchor i between x_j and x_k."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [i, j] = unit(x_j − x_i)
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_loss(s: torch.Tensor, t: torch.Tensor, w_dist: float = 1.0, w_angle: float = 2.0) -> torch.Tensor:
    """Relational KD (Park et al. 2019), distance + angle, per anchor: (B, Ds), (B, Dt) → (B,).

    Distance term: Huber(ψ_s(i,j), ψ_t(i,j)) with ψ = pairwise distance / its mean over the
    off-diagonal pairs; angle term: Huber on cos∠(x_j, x_i, x_k). Sample i's value is
    w_dist · mean_j + w_angle · mean_{j,k} of its row (anchor i), so the batch mean is the authors'
    ``w_dist · L_D + w_angle · L_A`` (smooth-L1 mean over all B² / B³ entries). PAD's metric-learning
    setting uses weights 1 : 2 on un-normalised features.
    """
    if s.shape[0] != t.shape[0] or s.shape[0] < 2:
        raise ValueError(f"rkd: need the same batch size ≥ 2, got {s.shape[0]} and {t.shape[0]}")
    B = s.shape[0]
    with torch.no_grad():
        td = _pdist(t)
        td = td / td[td > 0].mean()
        ta = _rkd_angles(t)
    sd = _pdist(s)
    sd = sd / sd[sd > 0].mean()
    dist = F.smooth_l1_loss(sd, td, reduction="none").mean(dim=1)
    angle = F.smooth_l1_loss(_rkd_angles(s), ta, reduction="none").reshape(B, -1).mean(dim=1)
    return w_dist * dist + w_angle * angle


def _kernel(e: torch.Tensor, kernel: str, gamma: float) -> torch.Tensor:
    if kernel == "gaussian":
        return torch.exp(-gamma * _pdist(e, squared=True))
    if kernel == "bilinear":
        return e @ e.t()
    raise ValueError(f"cc: unknown kernel {kernel!r}; expected 'gaussian' or 'bilinear'")


def cc_loss(s: torch.Tensor, t: torch.Tensor, kernel: str = "gaussian", gamma: float = 0.4) -> torch.Tensor:
    """Correlation congruence (Peng et al. 2019), per anchor: (B, Ds), (B, Dt) → (B,).

    Correlation matrices C_ij = k(x_i, x_j) with a Gaussian RBF kernel exp(−γ‖x_i − x_j‖²)
    computed exactly (the paper uses its P-th order Taylor expansion; γ = 0.4 as there) or the
    bilinear kernel x_i·x_j. Loss = ‖C_s − C_t‖²_F / B²; sample i's value is its row sum / B.
    """
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"cc: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")
    cs = _kernel(s, kernel, gamma)
    with torch.no_grad():
        ct = _kernel(t, kernel, gamma)
    return (cs - ct).pow(2).sum(dim=1) / s.shape[0]


def sp_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori 2019), per anchor: (B, Ds), (B, Dt) → (B,).

    G = row-L2-normalised (X Xᵀ); loss = ‖G_s − G_t‖²_F / B²; sample i's value is its row sum / B.
    """
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"sp: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")
    s, t = s.flatten(1), t.flatten(1)
    gs = F.normalize(s @ s.t(), dim=1)
    with torch.no_grad():
        gt = F.normalize(t @ t.t(), dim=1)
    return (gs - gt).pow(2).sum(dim=1) / s.shape[0]


def pkt_loss(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018), per anchor: → (B,).

    Cosine similarities mapped to [0, 1] by (c + 1) / 2 and row-normalised into conditional
    probabilities p(j | i); sample i's value is KL(p_t(·|i) ‖ p_s(·|i)) summed over j. (The
    authors' code takes the mean over all B² terms, i.e. our batch mean divided by B.)
    """
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"pkt: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")

    def cond(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)
        sim = (x @ x.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    ps = cond(s)
    with torch.no_grad():
        pt = cond(t)
    return (pt * torch.log((pt + eps) / (ps + eps))).sum(dim=1)


def darkrank_loss(s: torch.Tensor, t: torch.Tensor, alpha: float = 3.0, beta: float = 3.0) -> torch.Tensor:
    """DarkRank HardRank (Chen et al. 2018), per anchor (query): (B, Ds), (B, Dt) → (B,).

    Scores S(i, j) = −α ‖x_i − x_j‖^β over the other B−1 samples; π = the teacher's ranking of them
    (descending score). Sample i's value is the Plackett–Luce negative log-likelihood of π under the
    student scores: Σ_k [log Σ_{m≥k} exp S_s(π_m) − S_s(π_k)]. α = β = 3 as in the paper.
    """
    B = s.shape[0]
    if t.shape[0] != B or B < 2:
        raise ValueError(f"darkrank: need the same batch size ≥ 2, got {B} and {t.shape[0]}")
    off = ~torch.eye(B, dtype=torch.bool, device=s.device)
    ss = (-alpha * _pdist(s).pow(beta))[off].view(B, B - 1)
    with torch.no_grad():
        st = (-alpha * _pdist(t).pow(beta))[off].view(B, B - 1)
        order = st.argsort(dim=1, descending=True)
    x = ss.gather(1, order)
    tail_lse = torch.logcumsumexp(x.flip(1), dim=1).flip(1)
    return (tail_lse - x).sum(dim=1)


class VIDLoss(nn.Module):
    """Variational information distillation (Ahn et al. 2019) on embeddings, elementwise (B, D_t).

    A regressor μ(s) (Linear–ReLU–Linear–ReLU–Linear, hidden width D_t, as the 1×1-conv regressor of
    the verified RepDistiller code) and a learned per-dimension variance σ²_d = softplus(θ_d) + eps
    (initialised to `init_var` = 5.0); elementwise value 0.5 · ((t − μ)² / σ² + log σ²).
    VID's variance is per *dimension*, shared by all samples, so it treats samples equally; it is
    not compatible with PAD (which would add a second variance).
    """

    def __init__(self, student_dim: int, teacher_dim: int, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.regressor = nn.Sequential(
            nn.Linear(student_dim, teacher_dim),
            nn.ReLU(),
            nn.Linear(teacher_dim, teacher_dim),
            nn.ReLU(),
            nn.Linear(teacher_dim, teacher_dim),
        )
        self.log_scale = nn.Parameter(torch.full((teacher_dim,), math.log(math.expm1(init_var - eps))))

    def variance(self) -> torch.Tensor:
        """Per-dimension σ² (D_t,)."""
        return F.softplus(self.log_scale) + self.eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mu = self.regressor(s)
        _check_pair(mu, t, "vid (regressed student vs teacher)")
        var = self.variance()
        return 0.5 * ((t - mu).pow(2) / var + torch.log(var))
