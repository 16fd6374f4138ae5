"""BYOL (Grill, Strub, Altché, Tallec, Richemond et al., NeurIPS 2020, "Bootstrap Your Own Latent").

An online network (encoder, projector, predictor) regresses the target network's projection of the other
view; the target is an exponential moving average of the online encoder and projector, with no negatives.
What matters: the predictor and the slowly moving target (tau 0.996 rising to 1 with a cosine over
training) prevent collapse; the two views are augmented asymmetrically (blur always on one, rarely on the
other; solarisation on the second only); the loss is symmetrised; LARS with batch-norm and biases excluded
from adaptation and weight decay."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.augment import ViewSpec, byol_views
from training.config import BYOLConfig
from training.heads import projection_head
from training.losses import byol_regression
from training.methods.base import Method, ema_update, momentum_copy
from training.optim import cosine_with_warmup
from zoo.backbones import Encoder


class BYOL(Method):
    name = "byol"
    config_class = BYOLConfig

    def __init__(self, encoder: Encoder, cfg: BYOLConfig):
        super().__init__(encoder, cfg)
        self.projector = projection_head(encoder.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=2)
        self.predictor = projection_head(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, num_layers=2)
        self.target_encoder = momentum_copy(encoder)
        self.target_projector = momentum_copy(self.projector)

    def view_spec(self, image_size: int) -> ViewSpec:
        return byol_views(image_size)

    def momentum_networks(self) -> list[nn.Module]:
        return [self.target_encoder, self.target_projector]

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        x1, x2 = views
        # Each view is its own batch (own batch-norm statistics), as in the authors' code.
        p1, p2 = (self.predictor(self.projector(self.encoder(x))) for x in (x1, x2))
        with torch.no_grad():
            t1, t2 = (self.target_projector(self.target_encoder(x)) for x in (x1, x2))
        loss = byol_regression(p1, t2) + byol_regression(p2, t1)
        return {"loss": loss}

    def target_momentum(self, step: int, total_steps: int) -> float:
        """tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 (BYOL, sec. 3.2)."""
        return cosine_with_warmup(step, total_steps, 0, self.cfg.momentum_ema, 1.0)

    def on_step_end(self, step: int, total_steps: int) -> None:
        tau = self.target_momentum(step, total_steps)
        ema_update(self.target_encoder, self.encoder, tau)
        ema_update(self.target_projector, self.projector, tau)
