"""Batch norm whose statistics span every process, on CPU (gloo) as well as CUDA.

`torch.nn.SyncBatchNorm` refuses CPU tensors; contrastive methods need global statistics so that
per-process batch norm cannot leak which samples share a process (SimCLR's "global BN").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.distributed import is_distributed, world_size


def _all_reduce_sum(x: Tensor) -> Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x)


class GlobalBatchNorm(nn.BatchNorm2d):
    """Batch norm over the union of every process's batch (any input rank >= 2, channels in dim 1)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = _all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = _all_reduce_sum(centred.pow(2).sum(dims)) / n  # two passes: stable in fp32
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                self.num_batches_tracked += 1
        y = centred / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Swap every batch norm for its cross-process version (torch's on CUDA, ours on CPU)."""
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out
