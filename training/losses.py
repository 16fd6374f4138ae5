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
