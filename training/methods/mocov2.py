"""MoCo v2 (Chen, Fan, Girshick, He, 2020, "Improved Baselines with Momentum Contrastive Learning"),
on top of MoCo (He et al., CVPR 2020).

A query encoder is trained by InfoNCE against one positive key (the other view, encoded by a momentum
copy of the query encoder) and a queue of 65,536 keys from earlier batches. v2 adds the MLP projector,
stronger augmentation (blur) and a cosine schedule. What matters: the slowly moving key encoder
(m = 0.999) keeps the queue consistent; shuffling batch norm across GPUs stops a query and its key from
sharing statistics (one process emulates it by normalising the shuffled keys in groups)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.augment import ViewSpec, mocov2_views
from training.config import MoCoV2Config
from training.distributed import gather_no_grad, is_distributed, rank, world_size
from training.heads import projection_head
from training.losses import info_nce_queue
from training.memory import FeatureQueue
from training.methods.base import Method, ema_update, momentum_copy
from zoo.backbones import Encoder


class MoCoV2(Method):
    name = "mocov2"
    config_class = MoCoV2Config

    def __init__(self, encoder: Encoder, cfg: MoCoV2Config):
        super().__init__(encoder, cfg)
        self.projector = self.make_projector(encoder.embed_dim)
        self.key_encoder = momentum_copy(encoder)
        self.key_projector = momentum_copy(self.projector)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    def make_projector(self, dim: int) -> nn.Module:
        return projection_head(dim, self.cfg.proj_hidden_dim, self.cfg.proj_dim, num_layers=2, bn=False)

    def view_spec(self, image_size: int) -> ViewSpec:
        return mocov2_views(image_size)

    def momentum_networks(self) -> list[nn.Module]:
        return [self.key_encoder, self.key_projector]

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        xq, xk = views
        q = F.normalize(self.projector(self.encoder(xq)), dim=1)
        with torch.no_grad():
            k = F.normalize(self._keys(xk), dim=1)
        loss = info_nce_queue(q, k, self.queue.features.detach(), self.cfg.temperature)
        self._pending_keys = k
        return {"loss": loss}

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        if is_distributed() and world_size() > 1:
            return self._keys_shuffled_across_processes(x)
        n = x.shape[0]
        perm = torch.randperm(n, device=x.device)
        splits = max(1, min(self.cfg.shuffle_bn_splits, n // 2))
        chunks = [self.key_projector(self.key_encoder(c)) for c in x[perm].chunk(splits)]
        k = torch.cat(chunks)
        return k[torch.argsort(perm)]

    @torch.no_grad()
    def _keys_shuffled_across_processes(self, x: Tensor) -> Tensor:
        # The official shuffle-BN: gather all keys' images, permute them globally (same permutation on every
        # process, drawn on rank 0), encode this process's slice, then undo the permutation.
        n = x.shape[0]
        all_x = gather_no_grad(x)
        perm = torch.randperm(all_x.shape[0], device=x.device)
        torch.distributed.broadcast(perm, 0)
        mine = perm.view(world_size(), -1)[rank()]
        k = self.key_projector(self.key_encoder(all_x[mine]))
        all_k = gather_no_grad(k)
        unshuffle = torch.argsort(perm)
        return all_k[unshuffle].view(world_size(), n, -1)[rank()]

    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update(self.key_encoder, self.encoder, self.cfg.momentum_ema)
        ema_update(self.key_projector, self.projector, self.cfg.momentum_ema)
        keys = getattr(self, "_pending_keys", None)
        if keys is not None:
            self.queue.push(gather_no_grad(keys))
            self._pending_keys = None
