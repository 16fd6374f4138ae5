"""Loss functions, written from the papers' formulas. None calls `torch.distributed` itself: a `gather`
callable (identity in one process, an autograd-aware all-gather under DDP) brings other processes' samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.distributed import Gather, no_gather, rank


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: Gather = no_gather) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1), averaged over all 2N anchors.

    For anchor z1[i] the positive is z2[i]; the negatives are the other 2N-2 samples of the global batch.
    z1, z2: (n, d) projections of this process's samples; not necessarily normalised."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    a1, a2 = gather(z1), gather(z2)
    n = z1.shape[0]
    offset = rank() * n if a1.shape[0] != n else 0
    idx = torch.arange(n, device=z1.device) + offset
    total = a1.shape[0]
    self_mask = F.one_hot(idx, total).bool()

    def one_side(anchor: Tensor, same: Tensor, other: Tensor) -> Tensor:
        sim_same = (anchor @ same.T / temperature).masked_fill(self_mask, float("-inf"))
        sim_other = anchor @ other.T / temperature
        logits = torch.cat([sim_other, sim_same], dim=1)  # the positive is column idx of the first block
        return F.cross_entropy(logits, idx, reduction="sum")

    return (one_side(z1, a1, a2) + one_side(z2, a2, a1)) / (2 * n)


def info_nce_queue(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo's InfoNCE (He et al. 2020, eq. 1): one positive key per query, the queue as negatives.

    q, k: (n, d) normalised; queue: (K, d) normalised."""
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


# --- SwAV, BYOL / SimSiam, DINO, Barlow Twins (methods engineer B) --------------------------------------------

def _identity(x: Tensor) -> Tensor:
    return x


@torch.no_grad()
def sinkhorn(scores: Tensor, iterations: int = 3, epsilon: float = 0.05,
             all_reduce: Gather = _identity, world_size: int = 1) -> Tensor:
    """SwAV's Sinkhorn-Knopp (Caron et al. 2020, sec. 3.1 and the authors' `distributed_sinkhorn`).

    scores: (b, K) similarities of this process's samples to the K prototypes. Q = exp(scores / eps)^T is
    scaled alternately so that each prototype gets 1/K of the mass and each of the B = b * world_size
    samples 1/B; the sums over samples cross processes through `all_reduce` (a sum). Returns (b, K) soft
    codes whose rows sum to 1 (the last normalisation is over samples, so that constraint is exact; the
    prototype marginals are approximate after a few iterations)."""
    q = torch.exp(scores.float() / epsilon).t()  # (K, b)
    q /= all_reduce(q.sum())
    k, b_total = q.shape[0], q.shape[1] * world_size
    for _ in range(iterations):
        q /= all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b_total
    return (q * b_total).t()


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction (eq. 1-2): the code of view i is predicted from every other view j by
    a softmax over prototype scores at `temperature`; averaged over the pairs.

    scores: one (b, K) tensor per view; codes: the (b, K) Sinkhorn codes of the first len(codes) views."""
    total = scores[0].new_zeros(())
    for i, q in enumerate(codes):
        sub = scores[0].new_zeros(())
        for v, s in enumerate(scores):
            if v != i:
                sub = sub - (q * F.log_softmax(s / temperature, dim=1)).sum(dim=1).mean()
        total = total + sub / (len(scores) - 1)
    return total / len(codes)


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """-cos(p, z) averaged over the batch (SimSiam's D, eq. 1). `z` is detached by the caller."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


def byol_regression(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's loss for one direction (eq. 2): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), batch mean."""
    return 2 + 2 * negative_cosine(p, z)


def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, student_temp: float,
              teacher_temp: float) -> Tensor:
    """DINO's cross-entropy (Caron et al. 2021, eq. 2 and Algorithm 1): the centred, sharpened teacher
    distribution of each global view is the target for the student's distribution of every other view.

    student: one (b, K) tensor per view (global views first); teacher: one per global view (no grad)."""
    targets = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    total, terms = student[0].new_zeros(()), 0
    for i, q in enumerate(targets):
        for v, lp in enumerate(log_probs):
            if v != i:
                total = total - (q * lp).sum(dim=-1).mean()
                terms += 1
    return total / terms


@torch.no_grad()
def dino_center_update(center: Tensor, teacher: Tensor, momentum: float = 0.9,
                       gather: Gather = _identity) -> Tensor:
    """DINO's centre (eq. 4): c <- m c + (1 - m) mean of the teacher outputs over the global batch.

    teacher: (n, K) raw teacher outputs of this process; `gather` concatenates every process's."""
    batch_center = gather(teacher.detach().float()).mean(dim=0, keepdim=True)
    return center * momentum + batch_center * (1 - momentum)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 0.0051, gather: Gather = _identity,
                      eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, eq. 1): the cross-correlation matrix of the two views'
    embeddings, each standardised along the (global) batch as the authors' BatchNorm does, is pulled to
    the identity: sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
    a, b = gather(z1).float(), gather(z2).float()
    n = a.shape[0]
    a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + eps)
    b = (b - b.mean(0)) / torch.sqrt(b.var(0, unbiased=False) + eps)
    c = a.T @ b / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


# ====================================================================================================
# Losses of InstDisc, CMC, InvaSpread, MoCo v3 and CPC (methods-a).
# ====================================================================================================


def nce_memory(pos: Tensor, neg: Tensor, temperature: float, log_z: Tensor | float, num_data: int) -> Tensor:
    """Noise-contrastive estimation against a memory bank (Wu et al. 2018, eqs. 5-7; CMC reuses it).

    pos: (n,) similarity of each feature to its own bank entry; neg: (n, K) to K entries drawn uniformly
    (noise P_n = 1/N). With P(i|v) = exp(v.f / T) / Z, h = P / (P + K P_n), the loss is
    -log h(pos) - sum_k log(1 - h(neg_k)), averaged over the batch. `log_z` is the log of the fixed
    normalising constant (estimated once from the first batch)."""
    k = neg.shape[1]
    log_noise = torch.log(torch.tensor(k / num_data, dtype=pos.dtype, device=pos.device))
    s_pos = pos / temperature - log_z
    s_neg = neg / temperature - log_z
    log_h_pos = s_pos - torch.logaddexp(s_pos, log_noise)
    log_1m_h_neg = log_noise - torch.logaddexp(s_neg, log_noise)
    return -(log_h_pos + log_1m_h_neg.sum(dim=1)).mean()


def nonparametric_softmax(pos: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """The softmax variant of instance discrimination (Wu et al. 2018, eq. 2, with K sampled entries in
    place of all N): cross-entropy of the own bank entry against the sampled ones. pos (n,), neg (n, K)."""
    logits = torch.cat([pos[:, None], neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device))


def invariance_spreading(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather: Gather = no_gather) -> Tensor:
    """Ye et al. 2019 (eqs. 3-6), over both views of the batch as in their code: for each of the 2n
    anchors a with positive p (its other view),
        P(j|a) = exp(f_a.f_j / T) / sum_{k != a} exp(f_a.f_k / T),
        loss_a = -log P(p|a) - sum_{j not in {a, p}} log(1 - P(j|a)),
    averaged over anchors. The first term alone is NT-Xent; the second spreads the negatives apart.
    z1, z2: (n, d) this process's embeddings (normalised here); other processes' samples join as negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    a1, a2 = gather(F.normalize(z1, dim=1)), gather(F.normalize(z2, dim=1))
    n, total = z1.shape[0], a1.shape[0]
    offset = rank() * n if total != n else 0
    candidates = torch.cat([a1, a2])  # (2N, d): view-1 block, then view-2 block
    local = torch.arange(n, device=z.device) + offset
    self_idx = torch.cat([local, local + total])
    pos_idx = torch.cat([local + total, local])
    logits = (z @ candidates.T / temperature)
    rows = torch.arange(2 * n, device=z.device)
    logits[rows, self_idx] = float("-inf")
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos_term = log_p[rows, pos_idx]
    neg_mask = torch.ones_like(log_p, dtype=torch.bool)
    neg_mask[rows, self_idx] = False
    neg_mask[rows, pos_idx] = False
    log_1m_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
    neg_term = torch.where(neg_mask, log_1m_p, torch.zeros_like(log_1m_p)).sum(dim=1)
    return -(pos_term + neg_term).mean()


def moco_v3_contrastive(q: Tensor, k: Tensor, temperature: float = 1.0, gather: Gather = no_gather) -> Tensor:
    """MoCo v3's `ctr(q, k)` (Chen, Xie, He 2021, algorithm 1): InfoNCE of each query against the keys of
    the whole (gathered) batch, its own key the positive, scaled by 2T as in the paper's code.
    q: (n, d) predictions, k: (n, d) momentum keys (no gradient); both normalised here."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    keys = gather(k)
    n = q.shape[0]
    offset = rank() * n if keys.shape[0] != n else 0
    labels = torch.arange(n, device=q.device) + offset
    return F.cross_entropy(q @ keys.T / temperature, labels) * (2 * temperature)


def patch_info_nce(pred: Tensor, target_index: Tensor, candidates: Tensor, gather: Gather = no_gather,
                   reduction: str = "mean") -> Tensor:
    """CPC's InfoNCE over patches (van den Oord et al. 2018, eq. 4; Henaff et al. 2020, eq. 3): each
    prediction scores every patch feature of the (gathered) batch by an unnormalised dot product; the
    true patch is the positive, all others are negatives.
    pred: (M, d); target_index: (M,) rows of this process's `candidates` (P, d)."""
    all_c = gather(candidates)
    offset = rank() * candidates.shape[0] if all_c.shape[0] != candidates.shape[0] else 0
    return F.cross_entropy(pred @ all_c.T, target_index + offset, reduction=reduction)
