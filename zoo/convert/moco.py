"""MoCo v1/v2 (facebookresearch/moco) checkpoints -> our timm key names.

`moco_v{1,2}_*_pretrain.pth.tar` = `{"epoch", "arch", "state_dict", "optimizer"}`; the state dict is the DDP
`MoCo` module: `module.encoder_q.*` (the query ResNet-50, torchvision layout, `fc` = v1 linear / v2 MLP
projection), `module.encoder_k.*` (momentum copy) and `module.queue`/`module.queue_ptr`. We keep encoder_q
without its `fc`, as the repository's linear evaluation does.
"""

from __future__ import annotations

from typing import Any

from zoo.convert._common import StateDict, drop_prefixes, select_prefix, tensors_only, unwrap


def convert(ckpt: Any) -> StateDict:
    state = tensors_only(unwrap(ckpt, ("state_dict",)), "moco")
    return drop_prefixes(select_prefix(state, ("module.encoder_q.", "encoder_q."), "moco"), ("fc.",))
