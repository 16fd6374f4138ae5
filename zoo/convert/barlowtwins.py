"""Barlow Twins (facebookresearch/barlowtwins) checkpoints -> our timm key names.

The released `resnet50.pth` is the backbone alone: torchvision ResNet-50 keys without `fc`. A training checkpoint
(`checkpoint.pth`) is `{"epoch", "model", "optimizer"}` with `module.backbone.*`, `module.projector.*` and
`module.bn.*` (the batch norm on the projector output); only the backbone is kept.
"""

from __future__ import annotations

from typing import Any

from zoo.convert._common import StateDict, drop_prefixes, select_prefix, strip_prefix, tensors_only, unwrap


def convert(ckpt: Any) -> StateDict:
    state = strip_prefix(tensors_only(unwrap(ckpt, ("model", "state_dict")), "barlowtwins"), "module.")
    if any(k.startswith("backbone.") for k in state):
        state = select_prefix(state, "backbone.", "barlowtwins")
    return drop_prefixes(state, ("fc.",))
