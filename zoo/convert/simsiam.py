"""SimSiam (facebookresearch/simsiam) checkpoints -> our timm key names.

`checkpoint_0099.pth.tar` = `{"epoch", "arch", "state_dict", "optimizer"}`; the state dict is the DDP
`SimSiam` module: `module.encoder.*` (torchvision ResNet-50 whose `fc` is the 3-layer projector) and
`module.predictor.*`. We keep the encoder without `fc`, as the repository's linear evaluation does.
"""

from __future__ import annotations

from typing import Any

from zoo.convert._common import StateDict, drop_prefixes, select_prefix, tensors_only, unwrap


def convert(ckpt: Any) -> StateDict:
    state = tensors_only(unwrap(ckpt, ("state_dict",)), "simsiam")
    return drop_prefixes(select_prefix(state, ("module.encoder.", "encoder."), "simsiam"), ("fc.",))
