"""SwAV (facebookresearch/swav) checkpoints -> our timm key names.

`swav_800ep_pretrain.pth.tar` is a flat state dict of the DDP model: `module.` + torchvision ResNet-50 keys,
plus `module.projection_head.*` and `module.prototypes.weight`, which are dropped. Training checkpoints
(`checkpoint.pth.tar`) hold the same under `state_dict`.
"""

from __future__ import annotations

from typing import Any

from zoo.convert._common import StateDict, drop_prefixes, strip_prefix, tensors_only, unwrap


def convert(ckpt: Any) -> StateDict:
    state = strip_prefix(tensors_only(unwrap(ckpt, ("state_dict",)), "swav"), "module.")
    return drop_prefixes(state, ("projection_head.", "prototypes.", "fc."))
