"""SimCLR v1/v2 converted checkpoints -> our timm key names.

The authors released TensorFlow checkpoints only; two community PyTorch conversions are read here:
- v1, tonylins/simclr-converter: `{"state_dict": torchvision ResNet-50 keys}` (with the linear classifier
  as `fc`, dropped). A flat torchvision state dict, with or without `module.`, is read the same way.
- v2, Separius/SimCLRv2-Pytorch: `{"resnet": ..., "head": ...}` where `resnet` is that repository's own
  ResNet (`net.0` stem, `net.1..4` stages of `blocks.N` with `projection` shortcuts and `net.0..5`
  conv/BN pairs, `fc`). Only width 1x without selective kernels (`r50_1x_sk0`) maps onto torchvision's
  ResNet-50; SK models have extra convolutions and are refused by name. The projection `head` is dropped.
"""

from __future__ import annotations

import re
from typing import Any

from zoo.convert._common import (
    CheckpointLayoutError,
    StateDict,
    drop_prefixes,
    strip_prefix,
    tensors_only,
    unwrap,
)

# Separius block: net.{0..5} = conv1, bn1 (BatchNormRelu -> .0), conv2, bn2, conv3, bn3.
_BLOCK = {"net.0.": "conv1.", "net.1.0.": "bn1.", "net.2.": "conv2.", "net.3.0.": "bn2.", "net.4.": "conv3.",
          "net.5.0.": "bn3.", "projection.shortcut.": "downsample.0.", "projection.bn.0.": "downsample.1."}
_STAGE = re.compile(r"^net\.([1-4])\.blocks\.(\d+)\.(.*)$")


def convert(ckpt: Any) -> StateDict:
    if isinstance(ckpt, dict) and isinstance(ckpt.get("resnet"), dict):
        return _from_separius(tensors_only(ckpt["resnet"], "simclr v2 (Separius)"))
    state = strip_prefix(tensors_only(unwrap(ckpt, ("state_dict", "model")), "simclr"), "module.")
    return drop_prefixes(state, ("fc.",))


def _from_separius(state: StateDict) -> StateDict:
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        new = _separius_key(key)
        if new is None:
            unknown.append(key)
        elif new:
            out[new] = value
    if unknown:
        raise CheckpointLayoutError(
            "simclr v2 checkpoint has keys outside the R50 1x SK0 layout (selective-kernel or wider models "
            f"are not supported): {', '.join(unknown[:6])}" + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else ""))
    return out


def _separius_key(key: str) -> str | None:
    """torchvision name of a Separius key; "" for keys we drop; None for keys we cannot place."""
    if key.startswith("fc."):
        return ""
    for old, new in (("net.0.0.", "conv1."), ("net.0.1.0.", "bn1.")):
        if key.startswith(old) and "." not in key[len(old):]:
            return new + key[len(old):]
    m = _STAGE.match(key)
    if m:
        stage, block, rest = m.groups()
        for old, new in _BLOCK.items():
            # The remainder must be a parameter name: "net.2.conv.weight" (a selective kernel) is not a conv2.
            if rest.startswith(old) and "." not in rest[len(old):]:
                return f"layer{stage}.{block}.{new}{rest[len(old):]}"
    return None
