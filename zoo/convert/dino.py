"""DINO (facebookresearch/dino) checkpoints -> our timm key names.

Two files exist upstream:
- the released backbones (`dino_deitsmall16_pretrain.pth`, ..., `dino_resnet50_pretrain.pth`): a flat state
  dict, ViT keys already named like timm's VisionTransformer, ResNet keys in torchvision layout (identical to
  timm's ResNet), no classifier;
- full training checkpoints (`*_full_checkpoint.pth`): `{"student", "teacher", "optimizer", "epoch", "args",
  "dino_loss"}`, each network wrapped as `backbone.` + `head.` (the DINO projection head), the DDP-wrapped
  ones with a `module.` prefix. The paper evaluates the teacher, so that is the default.
"""

from __future__ import annotations

from typing import Any

from zoo.convert._common import (
    CheckpointLayoutError,
    StateDict,
    drop_prefixes,
    strip_prefix,
    tensors_only,
    unwrap,
)


def convert(ckpt: Any, network: str = "teacher") -> StateDict:
    if network not in ("teacher", "student"):
        raise CheckpointLayoutError(f"network must be 'teacher' or 'student', not {network!r}")
    state = tensors_only(unwrap(ckpt, (network, "state_dict")), "dino")
    state = strip_prefix(strip_prefix(state, "module."), "backbone.")
    return drop_prefixes(state, ("head.", "fc."))
