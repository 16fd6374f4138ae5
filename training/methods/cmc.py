"""CMC (Tian, Krishnan, Isola, 2019, "Contrastive Multiview Coding"), with the L / ab split of Lab colour
space as the two views.

The encoder converts RGB to Lab itself; the L channel goes through one half-width network and the ab
channels through another. Each half has a 128-d linear head and its own memory bank. The L feature of
an image is contrasted against the ab bank (its own entry positive, K random entries negative) and the
ab feature against the L bank: both directions, each by NCE with a fixed normaliser (InstDisc's loss,
T 0.07), and both banks move towards the new features with momentum 0.5. What matters: the two views
share only what survives the colour split; the exported encoder concatenates both halves' features,
as the paper evaluates them."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from training.augment import ViewSpec, cmc_views
from training.config import CMCConfig
from training.errors import ConfigError
from training.heads import LinearHead
from training.methods.base import Method
from training.methods.instdisc import BankContrast
from zoo.backbones import Encoder, LabSplitEncoder, arch_spec, build_encoder


class CMC(Method):
    name = "cmc"
    config_class = CMCConfig

    def __init__(self, encoder: Encoder, cfg: CMCConfig):
        if arch_spec(encoder.arch).kind:
            raise ConfigError(f"--arch {encoder.arch}: pass a plain backbone (e.g. resnet18_cifar); "
                              f"CMC builds its own composite encoder from it")
        split = build_encoder("cmc_" + encoder.arch, preprocessing=encoder.preprocessing,
                              half_width=cfg.half_width, **encoder.model_args)
        assert isinstance(split, LabSplitEncoder)
        super().__init__(split, cfg)
        self.head_l = LinearHead(int(split.model.l.num_features), cfg.proj_dim)
        self.head_ab = LinearHead(int(split.model.ab.num_features), cfg.proj_dim)
        # contrast_l holds the L bank: the ab features are scored against it, and vice versa.
        self.contrast_l = BankContrast(cfg.proj_dim, cfg.loss, cfg.num_negatives, cfg.temperature,
                                       cfg.memory_momentum)
        self.contrast_ab = BankContrast(cfg.proj_dim, cfg.loss, cfg.num_negatives, cfg.temperature,
                                        cfg.memory_momentum)
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def dataset_size(self) -> int:
        return self._modules["contrast_l"].bank.size if "contrast_l" in self._modules else 0

    @dataset_size.setter
    def dataset_size(self, n: int) -> None:
        for name in ("contrast_l", "contrast_ab"):
            if name in self._modules and n != self._modules[name].bank.size:
                self._modules[name].bank.resize(n)

    def view_spec(self, image_size: int) -> ViewSpec:
        return cmc_views(image_size)

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        h_l, h_ab = self.encoder.forward_views(views[0])
        f_l = F.normalize(self.head_l(h_l), dim=1)
        f_ab = F.normalize(self.head_ab(h_ab), dim=1)
        loss_l = self.contrast_ab(f_l, index)  # L against the ab bank
        loss_ab = self.contrast_l(f_ab, index)  # ab against the L bank
        self._pending = (index, f_l.detach(), f_ab.detach())
        return {"loss": loss_l + loss_ab, "loss_l": loss_l.detach(), "loss_ab": loss_ab.detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self._pending is not None:
            index, f_l, f_ab = self._pending
            self.contrast_l.update(index, f_l)
            self.contrast_ab.update(index, f_ab)
            self._pending = None
