"""Official checkpoints -> our model folder. One pure `state_dict -> state_dict` function per upstream layout.

Each converter takes what `torch.load(weights_only=True)` returned for the authors' file (wrappers included)
and returns the encoder's weights under timm key names, i.e. the keys of `build_encoder(arch).model`.
`convert_checkpoint` then checks that they fit the architecture (missing/unexpected keys named) and writes a
model folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.convert import barlowtwins, byol, dino, moco, mocov3, simclr, simsiam, swav, timm
from zoo.convert._common import CheckpointLayoutError, StateDict
from zoo.errors import ZooError

CONVERTERS: dict[str, Callable[[Any], StateDict]] = {
    "dino": dino.convert,
    "moco": moco.convert,
    "mocov3": mocov3.convert,
    "swav": swav.convert,
    "barlowtwins": barlowtwins.convert,
    "simsiam": simsiam.convert,
    "simclr": simclr.convert,
    "byol": byol.convert,
    "timm": timm.convert,
}

__all__ = ["CONVERTERS", "CheckpointLayoutError", "convert_checkpoint", "convert_state", "list_layouts"]


def list_layouts() -> list[str]:
    return sorted(CONVERTERS)


def convert_state(layout: str, ckpt: Any) -> StateDict:
    """Apply the converter of `layout` to a loaded checkpoint."""
    if layout not in CONVERTERS:
        raise ZooError(f"unknown checkpoint layout {layout!r}; choose one of: {', '.join(list_layouts())}")
    return CONVERTERS[layout](ckpt)


def convert_checkpoint(
    layout: str,
    checkpoint: str | os.PathLike,
    arch: str,
    out: str | os.PathLike,
    zoo_meta: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    preprocessing=None,
    dataset: str | None = None,
) -> Path:
    """Read an official checkpoint file safely, convert it, check it fits `arch`, write a model folder."""
    from zoo.backbones import build_encoder
    from zoo.folder import load_state_checked, save_encoder
    from zoo.weights import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    state = convert_state(layout, ckpt)
    encoder = build_encoder(arch, preprocessing=preprocessing, dataset=dataset, **(model_args or {}))
    load_state_checked(encoder, state, source=f"{checkpoint} (converted as {layout!r})", arch=arch)
    meta = {"converted_from": {"layout": layout, "file": Path(checkpoint).name}, **(zoo_meta or {})}
    return save_encoder(encoder, out, zoo_meta=meta)
