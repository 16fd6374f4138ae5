"""InvaSpread (Ye, Zhang, Yuen, Chang, CVPR 2019, "Unsupervised Embedding Learning via Invariant and
Spreading Instance Feature").

End-to-end instance discrimination without a memory bank: two augmented views of each image go through
one encoder and a 128-d linear embedding (L2-normalised); the softmax over the batch (T 0.1) makes the
two views of an image agree (invariance) and every other sample of the batch a negative whose
probability is pushed down (spreading). What matters: features are always current (no stale bank), so
the batch alone supplies the negatives."""

from __future__ import annotations

import torch
from torch import Tensor

from training.augment import ViewSpec, mocov1_views
from training.config import InvaSpreadConfig
from training.heads import LinearHead
from training.losses import invariance_spreading
from training.methods.base import Method
from zoo.backbones import Encoder


class InvaSpread(Method):
    name = "invaspread"
    config_class = InvaSpreadConfig

    def __init__(self, encoder: Encoder, cfg: InvaSpreadConfig):
        super().__init__(encoder, cfg)
        self.head = LinearHead(encoder.embed_dim, cfg.proj_dim)

    def view_spec(self, image_size: int) -> ViewSpec:
        return mocov1_views(image_size)  # their code: crop 0.2-1, grayscale 0.2, jitter 0.4, flip

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        x1, x2 = views
        z1, z2 = self.head(self.encoder(torch.cat([x1, x2]))).chunk(2)
        return {"loss": invariance_spreading(z1, z2, self.cfg.temperature, self.gather)}
