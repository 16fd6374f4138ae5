"""CPC v2 (Henaff, Srinivas, De Fauw, Razavi, Doersch, Eslami, van den Oord, ICML 2020, "Data-Efficient
Image Recognition with Contrastive Predictive Coding"), after CPC (van den Oord et al. 2018).

The image is cut into a 7 x 7 grid of patches overlapping by half; the backbone encodes every patch to
one pooled vector z[i, j]. A masked-convolution context network reads the grid top-down, so its output
c[i, j] has seen rows <= i only, and a linear map W_k per offset predicts z[i + k, j] from c[i, j].
InfoNCE scores each prediction against every patch of the batch (other processes' included): the true
patch is the positive. What matters: the prediction task spans rows the context has not seen, so the
features must capture what is shared across the image; the nearest row, which half-overlaps the
context's own row, is skipped by default. The exported encoder encodes an image's patch grid and
averages it to (B, D)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.augment import ViewSpec, cpc_views
from training.config import CPCConfig
from training.errors import ConfigError
from training.heads import CPCContext
from training.losses import patch_info_nce
from training.methods.base import Method
from zoo.backbones import Encoder, PatchGridEncoder, arch_spec


class CPC(Method):
    name = "cpc"
    config_class = CPCConfig

    def __init__(self, encoder: Encoder, cfg: CPCConfig):
        if not 1 <= cfg.first_step <= cfg.last_step < cfg.grid:
            raise ConfigError(f"prediction steps {cfg.first_step}..{cfg.last_step} must lie in 1..{cfg.grid - 1}")
        if arch_spec(encoder.arch).kind:
            raise ConfigError(f"--arch {encoder.arch}: pass a plain backbone (e.g. resnet18_cifar); "
                              f"CPC builds its own composite encoder from it")
        grid_encoder = PatchGridEncoder("cpc_" + encoder.arch, encoder.model, encoder.preprocessing,
                                        {**encoder.model_args, "grid": cfg.grid})
        super().__init__(grid_encoder, cfg)
        d = encoder.embed_dim
        self.context = CPCContext(d, cfg.context_dim, cfg.context_blocks)
        self.predictors = nn.ModuleList(nn.Conv2d(cfg.context_dim, d, 1)
                                        for _ in range(cfg.first_step, cfg.last_step + 1))

    def view_spec(self, image_size: int) -> ViewSpec:
        if image_size < 2 * (self.cfg.grid + 1):
            raise ConfigError(f"a {self.cfg.grid}x{self.cfg.grid} patch grid needs images of at least "
                              f"{2 * (self.cfg.grid + 1)} px (got {image_size}); lower -o grid or raise --image-size")
        return cpc_views(image_size)

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        z = self.encoder.patch_features(views[0])  # (B, g, g, D)
        b, g, _, d = z.shape
        c = self.context(z.permute(0, 3, 1, 2))  # (B, C, g, g)
        candidates = z.reshape(b * g * g, d)
        cell = torch.arange(b * g * g, device=z.device).view(b, g, g)
        total, count = z.new_zeros(()), 0
        for k, predictor in zip(range(self.cfg.first_step, self.cfg.last_step + 1), self.predictors):
            pred = predictor(c[:, :, : g - k, :]).permute(0, 2, 3, 1).reshape(-1, d)  # rows 0..g-k-1
            target = cell[:, k:, :].reshape(-1)  # the patch k rows below each context position
            total = total + patch_info_nce(pred, target, candidates, self.gather, reduction="sum")
            count += pred.shape[0]
        return {"loss": total / count}
