"""Feature stores that persist across steps: MoCo's queue (and, for InstDisc, a memory bank).

Both are registered buffers, so a checkpoint's `state_dict()` carries them and resumption is exact."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """A FIFO ring of `size` L2-normalised features of dimension `dim` (MoCo's dictionary)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Replace the oldest `len(keys)` entries (wrapping around the end)."""
        n = keys.shape[0]
        if n > self.size:
            keys, n = keys[-self.size:], self.size
        idx = (self.ptr + torch.arange(n, device=keys.device)) % self.size
        self.features[idx] = keys.to(self.features.dtype)
        self.ptr.copy_((self.ptr + n) % self.size)


class MemoryBank(nn.Module):
    """InstDisc's / CMC's memory bank: one L2-normalised feature per training image, refreshed with the
    feature just computed by a proximal (momentum) step, v_i <- normalise(m v_i + (1 - m) f_i).

    Sized once the data set is known (`resize`); a registered buffer, so checkpoints carry it."""

    def __init__(self, dim: int, size: int = 0):
        super().__init__()
        self.dim = dim
        self.register_buffer("features", torch.empty(size, dim))
        self.resize(size)

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def resize(self, size: int) -> None:
        self.features = F.normalize(torch.randn(size, self.dim, device=self.features.device), dim=1)

    @torch.no_grad()
    def sample(self, n: int, k: int) -> Tensor:
        """`(n, k)` indices drawn uniformly (the noise distribution of NCE)."""
        return torch.randint(0, self.size, (n, k), device=self.features.device)

    @torch.no_grad()
    def update(self, index: Tensor, feats: Tensor, momentum: float) -> None:
        mixed = self.features[index] * momentum + feats.detach().to(self.features.dtype) * (1 - momentum)
        self.features[index] = F.normalize(mixed, dim=1)
