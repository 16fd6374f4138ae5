"""SimSiam (Chen & He, CVPR 2021, "Exploring Simple Siamese Representation Learning").

Two views through one encoder and projector; a predictor maps each projection to the other's, whose
gradient is stopped: D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2 with D the negative cosine. No negatives, no
momentum encoder, no large batches. What matters: the stop-gradient (without it the output collapses),
the predictor (a 512-d bottleneck, its lr held fixed rather than decayed), batch norm in the projector
including on its output, and plain SGD (lr 0.05 x B/256, wd 1e-4)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from training.augment import ViewSpec, mocov2_views
from training.config import SimSiamConfig
from training.heads import Layer, mlp
from training.losses import negative_cosine
from training.methods.base import Method
from zoo.backbones import Encoder


class SimSiam(Method):
    name = "simsiam"
    config_class = SimSiamConfig

    def __init__(self, encoder: Encoder, cfg: SimSiamConfig):
        super().__init__(encoder, cfg)
        d, n = cfg.proj_dim, cfg.proj_layers
        dims = [encoder.embed_dim] + [d] * n
        # Every layer, the output one included, is followed by batch norm (the last without affine).
        layers: list[Layer] = [(dims[i], dims[i + 1], True, i < n - 1) for i in range(n)]
        self.projector = mlp(layers, last_bn_affine=False)
        self.predictor = mlp([(d, cfg.pred_hidden_dim, True, True), (cfg.pred_hidden_dim, d, False, False)])

    def view_spec(self, image_size: int) -> ViewSpec:
        return mocov2_views(image_size)

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        x1, x2 = views
        z1, z2 = (self.projector(self.encoder(x)) for x in (x1, x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2
        return {"loss": loss}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        groups = super().param_groups(weight_decay)
        if not self.cfg.fix_pred_lr:
            return groups
        predictor = {id(p) for p in self.predictor.parameters()}
        out = []
        for g in groups:
            rest = [p for p in g["params"] if id(p) not in predictor]
            mine = [p for p in g["params"] if id(p) in predictor]
            out += [{**g, "params": rest}] + ([{**g, "params": mine, "fixed_lr": True}] if mine else [])
        return out
