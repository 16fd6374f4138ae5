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
