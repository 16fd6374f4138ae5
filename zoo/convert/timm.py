"""Weights already under timm key names (e.g. a timm or ssl-zoo state dict in a `.pth` or `.safetensors`).

For manifest entries that point at such a file: unwraps `state_dict`/`model`, strips a DDP `module.` prefix
and drops a classifier (`head.`, `fc.`), since our encoders have none.
"""

from __future__ import annotations

from typing import Any

from zoo.convert._common import StateDict, drop_prefixes, strip_prefix, tensors_only, unwrap


def convert(ckpt: Any) -> StateDict:
    state = strip_prefix(tensors_only(unwrap(ckpt, ("state_dict", "model")), "timm"), "module.")
    return drop_prefixes(state, ("head.", "fc."))
