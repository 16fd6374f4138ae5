"""Process-group helpers. Losses take a `gather` callable from here instead of calling
`torch.distributed` themselves, so each of them runs in one CPU process under test."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

Gather = Callable[[Tensor], Tensor]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: str) -> None:
    """Join the process group torchrun describes in the environment (nccl on CUDA, gloo on CPU)."""
    if not launched_by_torchrun() or is_distributed():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)


def no_gather(x: Tensor) -> Tensor:
    return x


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from every process along dim 0; gradients flow back to each source."""
    if not is_distributed() or world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    if not is_distributed() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(x: Tensor) -> Tensor:
    if not is_distributed() or world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world_size()


def broadcast_(x: Tensor, src: int = 0) -> Tensor:
    if is_distributed() and world_size() > 1:
        dist.broadcast(x, src)
    return x


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of `x` over all processes (a new tensor; `x` itself is left alone). Identity in one process."""
    if not is_distributed() or world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y
