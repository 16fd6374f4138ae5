"""BYOL converted checkpoints -> our timm key names.

DeepMind released BYOL as JAX/Haiku parameter pickles, which we do not unpickle. Community converters turn
them into a torchvision ResNet-50 state dict (e.g. ajtejankar/byol-convert); this reads that: a flat state
dict or one under `state_dict`/`model`, with or without the DDP `module.` prefix; `fc` is dropped. Other
converters' layouts are not known to us; convert them to torchvision keys first.
"""

from __future__ import annotations

from typing import Any

from zoo.convert._common import StateDict, drop_prefixes, strip_prefix, tensors_only, unwrap


def convert(ckpt: Any) -> StateDict:
    state = strip_prefix(tensors_only(unwrap(ckpt, ("state_dict", "model")), "byol"), "module.")
    return drop_prefixes(state, ("fc.",))
