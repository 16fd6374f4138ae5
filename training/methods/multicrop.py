"""Multi-crop forward (SwAV, DINO): views of the same size go through the backbone in one batch.

The views arrive in order (large crops first, then small ones); consecutive views of one resolution are
concatenated, as the authors' `MultiCropWrapper` does, so batch norm sees each resolution as one batch and
a ViT runs once per resolution. The outputs come back concatenated in view order: (num_views * b, D)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def same_size_groups(views: list[Tensor]) -> list[list[Tensor]]:
    """Consecutive runs of views sharing one spatial size."""
    groups: list[list[Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def multicrop_forward(backbone: Callable[[Tensor], Tensor], views: list[Tensor]) -> Tensor:
    """`backbone` applied once per resolution; features of all views, concatenated in view order."""
    return torch.cat([backbone(torch.cat(group)) for group in same_size_groups(views)])
