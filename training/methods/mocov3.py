"""MoCo v3 (Chen, Xie, He, ICCV 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers").

No queue: two views go through the online encoder, a 3-layer projector (BN, 4096 hidden, 256 out) and a
2-layer predictor; a momentum copy of encoder and projector gives the keys; the loss is symmetric,
ctr(q1, k2) + ctr(q2, k1), InfoNCE against the keys of the whole batch gathered across processes.
What matters: large batches (in-batch negatives), the momentum rising from 0.99 to 1 on a cosine, and for
ViTs AdamW with T 0.2 and, as the paper's stability trick, a frozen random patch projection
(`-o freeze_patch_embed=true`); ResNets use LARS and T 1.0."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from training.augment import ViewSpec, byol_views
from training.config import MoCoV3Config
from training.errors import ConfigError
from training.heads import mlp, projection_head
from training.losses import moco_v3_contrastive
from training.methods.base import Method, ema_update, momentum_copy
from zoo.backbones import Encoder

# The paper's ViT recipe, applied when the backbone is a ViT (the config's class defaults are ResNet's).
VIT_RECIPE = {"optimizer": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.1, "warmup_epochs": 40.0}


class MoCoV3(Method):
    name = "mocov3"
    config_class = MoCoV3Config

    def __init__(self, encoder: Encoder, cfg: MoCoV3Config):
        super().__init__(encoder, cfg)
        if encoder.is_vit:
            for k, v in VIT_RECIPE.items():
                setattr(cfg, k, v)  # instance values shadow the ResNet class defaults the trainer reads
        self.temperature = _as_float(cfg.temperature, 0.2 if encoder.is_vit else 1.0)
        if cfg.freeze_patch_embed:
            if not encoder.is_vit:
                raise ConfigError("freeze_patch_embed needs a ViT backbone; drop the option for ResNets")
            encoder.model.patch_embed.proj.requires_grad_(False)
        self.projector = projection_head(encoder.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim,
                                         num_layers=cfg.proj_layers, last_bn=True)
        # As in their code: BN after the projector's last layer (affine off), none after the predictor's.
        self.predictor = mlp([(cfg.proj_dim, cfg.pred_hidden_dim, True, True),
                              (cfg.pred_hidden_dim, cfg.proj_dim, False, False)])
        self.momentum_encoder = momentum_copy(encoder)
        self.momentum_projector = momentum_copy(self.projector)

    def view_spec(self, image_size: int) -> ViewSpec:
        return byol_views(image_size)

    def momentum_networks(self) -> list[nn.Module]:
        return [self.momentum_encoder, self.momentum_projector]

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        x1, x2 = views
        q1, q2 = self.predictor(self.projector(self.encoder(torch.cat([x1, x2])))).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_projector(self.momentum_encoder(torch.cat([x1, x2]))).chunk(2)
        t = self.temperature
        loss = moco_v3_contrastive(q1, k2, t, self.gather) + moco_v3_contrastive(q2, k1, t, self.gather)
        return {"loss": loss}

    def momentum_at(self, step: int, total_steps: int) -> float:
        """m rises from the configured value to 1 on half a cosine over training."""
        m0 = self.cfg.momentum_ema
        return 1 - (1 - m0) * 0.5 * (1 + math.cos(math.pi * step / max(1, total_steps)))

    def on_step_end(self, step: int, total_steps: int) -> None:
        m = self.momentum_at(step, total_steps)
        ema_update(self.momentum_encoder, self.encoder, m)
        ema_update(self.momentum_projector, self.projector, m)


def _as_float(value: object, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"temperature={value!r}: expected a number") from e
