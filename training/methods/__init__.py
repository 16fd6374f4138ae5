"""Every method, by name. `get_method(name)` gives its class; unknown names list the known ones."""

from __future__ import annotations

from training.errors import ConfigError
from training.methods.barlowtwins import BarlowTwins
from training.methods.base import Method
from training.methods.byol import BYOL
from training.methods.cmc import CMC
from training.methods.cpc import CPC
from training.methods.dino import DINO
from training.methods.instdisc import InstDisc
from training.methods.invaspread import InvaSpread
from training.methods.mocov1 import MoCoV1
from training.methods.mocov2 import MoCoV2
from training.methods.mocov3 import MoCoV3
from training.methods.simclr import SimCLR
from training.methods.simclrv2 import SimCLRV2
from training.methods.simsiam import SimSiam
from training.methods.swav import SwAV

METHODS: dict[str, type[Method]] = {
    m.name: m for m in [InstDisc, InvaSpread, CPC, CMC, MoCoV1, MoCoV2, MoCoV3, SimCLR, SimCLRV2, SwAV, BYOL,
                        SimSiam, DINO, BarlowTwins]
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method"]
