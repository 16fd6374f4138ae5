"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, NeurIPS 2020, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments").

Each view's normalised projection is scored against K learnable prototypes; Sinkhorn-Knopp turns the
scores of the two large crops into balanced soft codes (every prototype gets an equal share of the global
batch, which prevents collapse), and each code is predicted from every other view (swapped prediction).
What matters: multi-crop (2 large + V small crops, only the large ones are assigned codes), the
equipartition in Sinkhorn (eps 0.05, 3 iterations, sums across processes), prototypes re-normalised every
step and frozen during the first epoch, and, for small batches, a queue of earlier embeddings that makes
the equipartition constraint meaningful."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.augment import ViewSpec, multicrop_for_image
from training.config import SwAVConfig
from training.distributed import all_reduce_sum, world_size
from training.heads import Prototypes, projection_head
from training.losses import sinkhorn, swav_loss
from training.methods.base import Method
from training.methods.multicrop import multicrop_forward
from training.optim import early_phase_steps
from zoo.backbones import Encoder

NUM_LARGE = 2  # the crops codes are computed for ("crops_for_assign")


class SwAV(Method):
    name = "swav"
    config_class = SwAVConfig

    def __init__(self, encoder: Encoder, cfg: SwAVConfig):
        super().__init__(encoder, cfg)
        self.projector = projection_head(encoder.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=2)
        self.prototypes = Prototypes(cfg.proj_dim, cfg.num_prototypes)
        # Embeddings of the large crops of earlier batches (newest first), per process; all zeros = not full.
        self.register_buffer("queue", torch.zeros(NUM_LARGE, cfg.queue_length // world_size(), cfg.proj_dim))
        self.steps_per_epoch = 1
        self.frozen_steps = 0

    def view_spec(self, image_size: int) -> ViewSpec:
        c = self.cfg
        return multicrop_for_image(image_size, c.num_local_crops, c.local_crop_size, 4, 6, c.global_crops_scale,
                                   c.local_crops_scale)

    def on_train_start(self, total_steps: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.frozen_steps = early_phase_steps(self.cfg.freeze_prototypes_epochs, steps_per_epoch, total_steps)

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        b = views[0].shape[0]
        z = F.normalize(self.projector(multicrop_forward(self.encoder, views)), dim=1)
        scores = self.prototypes(z)
        codes = [self._codes(scores[i * b:(i + 1) * b], z[i * b:(i + 1) * b], i, step) for i in range(NUM_LARGE)]
        loss = swav_loss(list(scores.split(b)), codes, self.cfg.temperature)
        return {"loss": loss}

    @torch.no_grad()
    def _codes(self, scores: Tensor, z: Tensor, crop: int, step: int) -> Tensor:
        scores = scores.detach()
        if self.queue.shape[1] > 0 and step // self.steps_per_epoch >= self.cfg.queue_start_epoch:
            queue = self.queue[crop]
            if bool(queue[-1].any()):  # full: its oldest slot has been written
                scores = torch.cat([self.prototypes(queue.to(scores.dtype)), scores])
            n = min(z.shape[0], queue.shape[0])
            queue[n:] = queue[:-n].clone()
            queue[:n] = z[:n].detach().to(queue.dtype)
        c = self.cfg
        q = sinkhorn(scores, c.sinkhorn_iterations, c.sinkhorn_epsilon, all_reduce_sum, world_size())
        return q[-z.shape[0]:]

    def before_optimizer_step(self, step: int, steps_per_epoch: int) -> None:
        if step < self.frozen_steps:
            self.prototypes.weight.grad = None

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.prototypes.normalize_()
