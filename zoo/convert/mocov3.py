"""MoCo v3 (facebookresearch/moco-v3) checkpoints -> our timm key names.

`r-50-1000ep.pth.tar`, `vit-s-300ep.pth.tar`, `vit-b-300ep.pth.tar` = `{"epoch", "arch", "state_dict",
"optimizer", "scaler"}`; the state dict is the DDP `MoCo` module: `module.base_encoder.*`,
`module.momentum_encoder.*`, `module.predictor.*`. The base encoder's projector replaces the classifier:
`fc.*` for ResNets, `head.*` for ViTs; both are dropped. The ViT is timm's VisionTransformer (fixed 2-D
sin-cos position embedding, stored as `pos_embed`), so its keys are already timm's. Note that MoCo v3's
ViT-S has 12 heads (timm's vit_small has 6); the registry entry passes `num_heads=12`.
"""

from __future__ import annotations

from typing import Any

from zoo.convert._common import StateDict, drop_prefixes, select_prefix, tensors_only, unwrap


def convert(ckpt: Any) -> StateDict:
    state = tensors_only(unwrap(ckpt, ("state_dict",)), "mocov3")
    return drop_prefixes(select_prefix(state, ("module.base_encoder.", "base_encoder."), "mocov3"), ("fc.", "head."))
