"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020, "A Simple Framework for Contrastive Learning of
Visual Representations").

Two augmented views of each image go through the same encoder and a 2-layer MLP projector; NT-Xent
pulls the two projections of an image together and pushes away the 2N-2 other samples of the (global)
batch. What matters: strong colour distortion in the views, the projector (features are taken before it),
large batches (negatives are gathered across processes), LARS, and batch norm over the global batch
(`--sync-bn`)."""

from __future__ import annotations

import torch
from torch import Tensor

from training.augment import ViewSpec, simclr_views
from training.config import SimCLRConfig
from training.heads import projection_head
from training.losses import nt_xent
from training.methods.base import Method
from zoo.backbones import Encoder


class SimCLR(Method):
    name = "simclr"
    config_class = SimCLRConfig

    def __init__(self, encoder: Encoder, cfg: SimCLRConfig):
        super().__init__(encoder, cfg)
        self.projector = projection_head(encoder.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=2)

    def view_spec(self, image_size: int) -> ViewSpec:
        return simclr_views(image_size)

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        x1, x2 = views
        # One pass over both views: batch-norm statistics cover the whole batch, as in the paper.
        z = self.projector(self.encoder(torch.cat([x1, x2])))
        z1, z2 = z.chunk(2)
        return {"loss": nt_xent(z1, z2, self.cfg.temperature, self.gather)}

