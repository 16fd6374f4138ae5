"""Optimizers (SGD, LARS, AdamW) and the per-step schedules: linear warm-up then cosine decay."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from training.errors import ConfigError


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as SimCLR/BYOL use it: SGD with momentum whose step for each weight matrix is
    scaled by trust * ||w|| / ||g + wd w||. Groups with `lars_exclude` (norms, biases) get plain SGD."""

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                if not group.get("lars_exclude", False):
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["trust_coefficient"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, momentum: float,
                    device: str) -> torch.optim.Optimizer:
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["lr"] = lr * g["lr_scale"]
    fused = device.startswith("cuda")
    if name == "sgd":
        clean = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.SGD(clean, lr=lr, momentum=momentum, **({"fused": True} if fused else {}))
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        clean = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.AdamW(clean, lr=lr, betas=(0.9, 0.999), **({"fused": True} if fused else {}))
    raise ConfigError(f"unknown optimizer {name!r}; choose sgd, lars or adamw")


def early_phase_steps(epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Steps of a phase the paper states in epochs (lr warm-up, a frozen last layer or prototypes), at most a
    tenth of the run: on a short run, "the first epoch" would otherwise be all of it."""
    return min(int(round(epochs * steps_per_epoch)), total_steps // 10)


def cosine_with_warmup(step: int, total: int, warmup: int, base: float, final: float = 0.0) -> float:
    """Linear warm-up from 0 to `base` over `warmup` steps, then half a cosine from `base` to `final`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the scheduled lr; groups marked `fixed_lr` (SimSiam's predictor) keep their initial lr."""
    for g in optimizer.param_groups:
        if not g.get("fixed_lr", False):
            g["lr"] = lr * g.get("lr_scale", 1.0)


def grad_norm(params: list[Tensor]) -> float:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.norm(torch.stack(norms))) if norms else 0.0
