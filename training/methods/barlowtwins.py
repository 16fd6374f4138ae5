"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021, "Barlow Twins: Self-Supervised Learning
via Redundancy Reduction").

Two views through one encoder and a wide projector; the cross-correlation matrix of the two embeddings,
each standardised along the batch, is driven to the identity: its diagonal to 1 (invariance) and its
off-diagonal, weighted by lambda = 0.0051, to 0 (redundancy reduction). No negatives, no asymmetry. What
matters: a wide, deep projector (3 x 8192; the paper's accuracy grows with its width), the batch-wise
standardisation over the global batch, LARS with a 40x smaller lr for biases and norms, BYOL's views."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from training.augment import ViewSpec, byol_views
from training.config import BarlowTwinsConfig
from training.heads import projection_head
from training.losses import barlow_twins_loss
from training.methods.base import Method
from zoo.backbones import Encoder


class BarlowTwins(Method):
    name = "barlowtwins"
    config_class = BarlowTwinsConfig

    def __init__(self, encoder: Encoder, cfg: BarlowTwinsConfig):
        super().__init__(encoder, cfg)
        self.projector = projection_head(encoder.embed_dim, cfg.proj_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    def view_spec(self, image_size: int) -> ViewSpec:
        return byol_views(image_size)

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        x1, x2 = views
        z1, z2 = (self.projector(self.encoder(x)) for x in (x1, x2))
        return {"loss": barlow_twins_loss(z1, z2, self.cfg.lambd, self.gather)}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        groups = super().param_groups(weight_decay)
        for g in groups:
            if g.get("lars_exclude"):  # biases and norms: the authors' separate, smaller learning rate
                g["lr_scale"] = self.cfg.bias_lr / self.cfg.base_lr
        return groups
