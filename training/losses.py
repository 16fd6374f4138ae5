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
