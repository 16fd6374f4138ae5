"""The interface every method implements, so the one trainer runs them all unchanged."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from training.augment import ViewSpec
from training.config import MethodConfig
from training.distributed import Gather, no_gather
from zoo.backbones import Encoder

NO_DECAY_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


class Method(nn.Module):
    """A self-supervised method: views in, loss out.

    Everything a resumed run needs (queues, memory banks, centres, momentum networks) is a registered
    buffer or submodule, so `state_dict()` carries it."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, encoder: Encoder, cfg: MethodConfig):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.gather: Gather = no_gather  # the trainer sets an all-gather under DDP
        self.dataset_size = 0  # the trainer sets it; memory-bank methods need it

    # What the trainer calls -------------------------------------------------------------------------
    def view_spec(self, image_size: int) -> ViewSpec:
        raise NotImplementedError

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        """Return {"loss": scalar, ...other scalars to log}."""
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After the optimizer step: momentum updates, queues, centres."""

    def on_train_start(self, total_steps: int, steps_per_epoch: int) -> None:
        """Before the first step (also after a resume)."""

    def before_optimizer_step(self, step: int, steps_per_epoch: int) -> None:
        """After backward, before the optimizer step: gradient surgery (e.g. freezing a layer for an epoch)."""

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Trainable parameters, with weight decay off for norms and biases (and LARS adaptation off)."""
        decay, no_decay = [], []
        seen: set[int] = set()
        for module in self.modules():
            for pname, p in module.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if isinstance(module, NO_DECAY_TYPES) or pname.endswith("bias") or p.ndim <= 1:
                    no_decay.append(p)
                else:
                    decay.append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
        return groups

    def encoder_for_export(self) -> Encoder:
        """The network the paper evaluates (the online / query encoder; DINO overrides: the teacher)."""
        return self.encoder

    def momentum_networks(self) -> list[nn.Module]:
        """Networks updated by EMA rather than by gradients (kept out of DDP's gradient sync)."""
        return []


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` for EMA updates."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target = m * target + (1 - m) * online, for parameters; buffers (BN statistics) are copied from
    target's own forward passes, as MoCo does."""
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.mul_(momentum).add_(po.detach(), alpha=1 - momentum)
