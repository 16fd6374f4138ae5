"""MoCo v1 (He, Fan, Wu, Xie, Girshick, CVPR 2020, "Momentum Contrast for Unsupervised Visual
Representation Learning").

MoCo v2 without its improvements: a linear 128-d head instead of the MLP, temperature 0.07, and the
weaker InstDisc-style augmentation (no blur). Queue 65536 and key-encoder momentum 0.999 as in v2."""

from __future__ import annotations

from torch import nn

from training.augment import ViewSpec, mocov1_views
from training.config import MoCoV1Config
from training.heads import LinearHead
from training.methods.mocov2 import MoCoV2


class MoCoV1(MoCoV2):
    name = "mocov1"
    config_class = MoCoV1Config

    def make_projector(self, dim: int) -> nn.Module:
        return LinearHead(dim, self.cfg.proj_dim)

    def view_spec(self, image_size: int) -> ViewSpec:
        return mocov1_views(image_size)
