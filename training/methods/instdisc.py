"""InstDisc (Wu, Xiong, Yu, Lin, CVPR 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination").

Every training image is its own class. A memory bank keeps one 128-d L2-normalised feature per image;
each step scores the batch's features against their own bank entry and 4096 entries drawn at random,
with noise-contrastive estimation (or the softmax over those entries), temperature 0.07. The bank
entries of the batch are then moved towards the new features with momentum 0.5 (the proximal update).
What matters: the bank gives many negatives at the cost of one forward pass; the NCE normaliser Z is
estimated once, from the first batch, and kept fixed. One augmented view per image per step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.augment import ViewSpec, instdisc_views
from training.config import InstDiscConfig
from training.distributed import all_reduce_mean, gather_no_grad
from training.errors import ConfigError
from training.heads import LinearHead
from training.losses import nce_memory, nonparametric_softmax
from training.memory import MemoryBank
from training.methods.base import Method
from zoo.backbones import Encoder


class BankContrast(nn.Module):
    """Features against a memory bank: NCE (with its fixed normaliser Z) or the softmax over K sampled
    entries. The bank, Z and the pending update are the state InstDisc and CMC share."""

    def __init__(self, dim: int, loss: str, num_negatives: int, temperature: float, momentum: float):
        super().__init__()
        if loss not in ("nce", "softmax"):
            raise ConfigError(f"loss={loss!r}: use nce or softmax")
        self.loss, self.k, self.t, self.m = loss, num_negatives, temperature, momentum
        self.bank = MemoryBank(dim)
        self.register_buffer("log_z", torch.tensor(float("nan")))  # set from the first batch

    def forward(self, f: Tensor, index: Tensor) -> Tensor:
        """f: (n, d) normalised features, scored against bank[index] (positive) and K random entries."""
        if index is None:
            raise ConfigError("a memory-bank method needs the dataset indices of the batch")
        with torch.no_grad():
            pos_w = self.bank.features[index]
            neg_w = self.bank.features[self.bank.sample(f.shape[0], self.k)]
        pos = (f * pos_w).sum(dim=1)
        neg = torch.einsum("nd,nkd->nk", f, neg_w)
        if self.loss == "softmax":
            return nonparametric_softmax(pos, neg, self.t)
        if torch.isnan(self.log_z):
            with torch.no_grad():  # Z ~ N * E[exp(s / T)] over the first batch's scores (their code)
                mean_exp = torch.cat([pos[:, None], neg], dim=1).float().div(self.t).exp().mean()
                self.log_z.copy_(torch.log(all_reduce_mean(mean_exp) * self.bank.size))
        return nce_memory(pos.float(), neg.float(), self.t, self.log_z, self.bank.size)

    @torch.no_grad()
    def update(self, index: Tensor, f: Tensor) -> None:
        self.bank.update(gather_no_grad(index), gather_no_grad(f.detach()), self.m)


class InstDisc(Method):
    name = "instdisc"
    config_class = InstDiscConfig

    def __init__(self, encoder: Encoder, cfg: InstDiscConfig):
        super().__init__(encoder, cfg)
        self.head = LinearHead(encoder.embed_dim, cfg.proj_dim)
        self.contrast = BankContrast(cfg.proj_dim, cfg.loss, cfg.num_negatives, cfg.temperature,
                                     cfg.memory_momentum)
        self._pending: tuple[Tensor, Tensor] | None = None

    # The trainer sets dataset_size after construction, before loading a checkpoint: size the bank then.
    @property
    def dataset_size(self) -> int:
        return self._modules["contrast"].bank.size if "contrast" in self._modules else 0

    @dataset_size.setter
    def dataset_size(self, n: int) -> None:
        if "contrast" in self._modules and n != self.contrast.bank.size:
            self.contrast.bank.resize(n)

    def view_spec(self, image_size: int) -> ViewSpec:
        return instdisc_views(image_size)

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        f = F.normalize(self.head(self.encoder(views[0])), dim=1)
        loss = self.contrast(f, index)
        self._pending = (index, f.detach())
        return {"loss": loss}

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self._pending is not None:
            self.contrast.update(*self._pending)
            self._pending = None
