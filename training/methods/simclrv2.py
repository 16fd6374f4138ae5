"""SimCLR v2 (Chen, Kornblith, Swersky, Norouzi, Hinton, NeurIPS 2020, "Big Self-Supervised Models are
Strong Semi-Supervised Learners").

SimCLR with a deeper projector: three layers, each with batch norm, hidden width the backbone's, 128
out. Fine-tuning starts "from the middle layer" of that head, so `-o export_head_layers=1` exports the
backbone followed by the projector's first layer (Linear -> BN -> ReLU) as the encoder (a `head_<arch>`
model folder); 0 (the default) exports the backbone alone, the features linear evaluation uses.
`-o momentum_encoder=true` adds MoCo's memory: keys from a momentum copy (m 0.999) of encoder and
projector, and a queue of earlier keys as extra negatives (InfoNCE per view, symmetric)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.augment import ViewSpec, simclr_views
from training.config import SimCLRV2Config
from training.distributed import gather_no_grad
from training.errors import ConfigError
from training.heads import projection_head
from training.losses import info_nce_queue, nt_xent
from training.memory import FeatureQueue
from training.methods.base import Method, ema_update, momentum_copy
from zoo.backbones import BackboneWithHead, Encoder


class SimCLRV2(Method):
    name = "simclrv2"
    config_class = SimCLRV2Config

    def __init__(self, encoder: Encoder, cfg: SimCLRV2Config):
        super().__init__(encoder, cfg)
        if not 0 <= cfg.export_head_layers < cfg.proj_layers:
            raise ConfigError(f"export_head_layers={cfg.export_head_layers}: use 0 (backbone only) up to "
                              f"{cfg.proj_layers - 1} (all hidden layers of the projector)")
        hidden = cfg.proj_hidden_dim or encoder.embed_dim
        self.projector = projection_head(encoder.embed_dim, hidden, cfg.proj_dim, num_layers=cfg.proj_layers,
                                         last_bn=True)
        if cfg.momentum_encoder:
            self.key_encoder = momentum_copy(encoder)
            self.key_projector = momentum_copy(self.projector)
            self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)
        self._pending_keys: Tensor | None = None

    def view_spec(self, image_size: int) -> ViewSpec:
        return simclr_views(image_size)

    def momentum_networks(self) -> list[nn.Module]:
        return [self.key_encoder, self.key_projector] if self.cfg.momentum_encoder else []

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        x1, x2 = views
        z1, z2 = self.projector(self.encoder(torch.cat([x1, x2]))).chunk(2)
        if not self.cfg.momentum_encoder:
            return {"loss": nt_xent(z1, z2, self.cfg.temperature, self.gather)}
        with torch.no_grad():
            k1, k2 = F.normalize(self.key_projector(self.key_encoder(torch.cat([x1, x2]))), dim=1).chunk(2)
        q1, q2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        queue = self.queue.features.detach()
        t = self.cfg.temperature
        loss = 0.5 * (info_nce_queue(q1, k2, queue, t) + info_nce_queue(q2, k1, queue, t))
        self._pending_keys = torch.cat([k1, k2])
        return {"loss": loss}

    def on_step_end(self, step: int, total_steps: int) -> None:
        if not self.cfg.momentum_encoder:
            return
        ema_update(self.key_encoder, self.encoder, self.cfg.momentum_ema)
        ema_update(self.key_projector, self.projector, self.cfg.momentum_ema)
        if self._pending_keys is not None:
            self.queue.push(gather_no_grad(self._pending_keys))
            self._pending_keys = None

    def encoder_for_export(self) -> Encoder:
        n = self.cfg.export_head_layers
        if n == 0:
            return self.encoder
        enc = self.encoder
        widths = [m.out_features for m in self.projector if isinstance(m, nn.Linear)][:n]
        model = BackboneWithHead(enc.model, widths)
        # The projector's first n (Linear, BN, ReLU) triples, same layout as BackboneWithHead's head.
        model.head.load_state_dict(self.projector[: 3 * n].state_dict())
        model.head.train(self.projector.training)
        return Encoder("head_" + enc.arch, model, enc.preprocessing, {**enc.model_args, "head_dims": widths})
