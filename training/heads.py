"""Projection and prediction heads, built from `(in, out, batch-norm?, activation?)` layer tuples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Layer = tuple[int, int, bool, bool]  # in_dim, out_dim, batch norm after, ReLU after


def mlp(layers: Sequence[Layer], last_bn_affine: bool = True) -> nn.Sequential:
    """A stack of Linear [-> BatchNorm1d] [-> ReLU]; a linear layer followed by BN has no bias."""
    mods: list[nn.Module] = []
    for i, (d_in, d_out, bn, act) in enumerate(layers):
        mods.append(nn.Linear(d_in, d_out, bias=not bn))
        if bn:
            is_last = i == len(layers) - 1
            mods.append(nn.BatchNorm1d(d_out, affine=last_bn_affine or not is_last))
        if act:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, bn: bool = True,
                    last_bn: bool = False) -> nn.Sequential:
    """`num_layers` linear layers with BN+ReLU between them (SimCLR, MoCo v2, BYOL, SimSiam, Barlow Twins)."""
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers: list[Layer] = [(dims[i], dims[i + 1], bn, True) for i in range(num_layers - 1)]
    layers.append((dims[-2], dims[-1], last_bn, False))
    return mlp(layers, last_bn_affine=False)


class LinearHead(nn.Module):
    """A single linear layer (MoCo v1, InstDisc)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


# --- DINO head and SwAV prototypes (methods engineer B) --------------------------------------------------------

class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight = g * v / ||v|| per output unit (Salimans & Kingma 2016).

    Written out rather than through torch's parametrisation so the parameters keep the names of DINO's
    checkpoints (`weight_g`, `weight_v`) and the module deep-copies plainly for the teacher."""

    def __init__(self, in_dim: int, out_dim: int, fix_norm: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_norm)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_g * F.normalize(self.weight_v, dim=1)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, sec. 3.1): a 3-layer MLP (GELU, hidden 2048) to a
    256-d bottleneck, L2 normalisation, then a weight-normalised linear layer to K outputs.
    `norm_last_layer` fixes the norm of the last layer's rows to 1, which the authors found stabilising."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        mods: list[nn.Module] = []
        for i in range(num_layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                if use_bn:
                    mods.append(nn.BatchNorm1d(dims[i + 1]))
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class Prototypes(nn.Module):
    """SwAV's K prototype vectors (a bias-free linear layer), kept on the unit sphere by `normalize_()`."""

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's initialisation
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.weight.T


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only the rows above and its own row (PixelCNN-style causality in the
    vertical direction): stacked, the output at row i depends on input rows <= i only."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2)
        mask = torch.ones_like(self.weight)
        mask[:, :, kernel_size // 2 + 1:, :] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class CPCContext(nn.Module):
    """CPC's context network over the patch grid: a 1x1 input projection, then residual blocks of
    ReLU -> masked 3x3 conv -> ReLU -> 1x1 conv, so the context c[i, j] summarises rows <= i."""

    def __init__(self, in_dim: int, dim: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(in_dim, dim, 1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.ReLU(), MaskedConv2d(dim), nn.ReLU(), nn.Conv2d(dim, dim, 1))
                                    for _ in range(blocks))

    def forward(self, z: Tensor) -> Tensor:
        c = self.inp(z)
        for block in self.blocks:
            c = c + block(c)
        return c
