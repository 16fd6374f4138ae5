"""Every method, by name. `get_method(name)` gives its class; unknown names list the known ones."""

from __future__ import annotations

from training.errors import ConfigError
from training.methods.barlowtwins import BarlowTwins
from training.methods.base import Method
from training.methods.byol import BYOL
from training.methods.dino import DINO
from training.methods.mocov2 import MoCoV2
from training.methods.simclr import SimCLR
from training.methods.simsiam import SimSiam
from training.methods.swav import SwAV

METHODS: dict[str, type[Method]] = {m.name: m for m in [SimCLR, MoCoV2, SwAV, BYOL, SimSiam, DINO, BarlowTwins]}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method"]
