"""Backbones built with timm, and the `Encoder` every part of the project speaks to.

An `Encoder` takes normalised RGB images `(B, 3, H, W)` and returns pooled features `(B, D)`; it carries
its preprocessing (input size, mean, std) so that whoever feeds it (evaluation, ONNX export, the
service) prepares images the way it was trained. ViT encoders also expose the last block's self-attention,
computed explicitly because timm's fused attention (SDPA) returns no weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from torch import Tensor, nn

from zoo.errors import UnknownArchitectureError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for an encoder (timm's `pretrained_cfg` subset)."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    @property
    def image_size(self) -> int:
        return self.input_size[-1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=tuple(d.get("input_size", (3, 224, 224))),
            mean=tuple(d.get("mean", IMAGENET_MEAN)),
            std=tuple(d.get("std", IMAGENET_STD)),
            interpolation=d.get("interpolation", "bicubic"),
            crop_pct=float(d.get("crop_pct", 0.875)),
        )


@dataclass(frozen=True)
class ArchSpec:
    """One architecture name of ours: which timm model it is built from, and how."""

    name: str
    timm_name: str
    image_size: int
    timm_args: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 32-96 px images
    description: str = ""

    @property
    def is_vit(self) -> bool:
        return self.timm_name.startswith("vit_")


def _vit(name: str, timm_name: str, size: int, desc: str, **args: Any) -> ArchSpec:
    # dynamic_img_size lets one set of weights run at other resolutions (position embeddings interpolated).
    return ArchSpec(name, timm_name, size, {"img_size": size, "dynamic_img_size": True, **args}, description=desc)


_ARCHS: dict[str, ArchSpec] = {
    a.name: a
    for a in [
        ArchSpec("resnet18", "resnet18", 224, description="ResNet-18, ImageNet stem"),
        ArchSpec("resnet50", "resnet50", 224, description="ResNet-50, ImageNet stem"),
        ArchSpec("resnet18_cifar", "resnet18", 32, cifar_stem=True,
                 description="ResNet-18 with a 3x3 stride-1 stem and no max-pool (32-96 px)"),
        ArchSpec("resnet50_cifar", "resnet50", 32, cifar_stem=True,
                 description="ResNet-50 with a 3x3 stride-1 stem and no max-pool (32-96 px)"),
        _vit("vit_tiny", "vit_tiny_patch16_224", 224, "ViT-Ti/16"),
        _vit("vit_small", "vit_small_patch16_224", 224, "ViT-S/16"),
        _vit("vit_base", "vit_base_patch16_224", 224, "ViT-B/16"),
        _vit("vit_small8", "vit_small_patch8_224", 224, "ViT-S/8"),
        _vit("vit_base8", "vit_base_patch8_224", 224, "ViT-B/8"),
        _vit("vit_tiny_p4", "vit_tiny_patch16_224", 32, "ViT-Ti, patch 4, 32 px", patch_size=4),
        _vit("vit_small_p4", "vit_small_patch16_224", 32, "ViT-S, patch 4, 32 px", patch_size=4),
        _vit("vit_tiny_p8", "vit_tiny_patch16_224", 96, "ViT-Ti, patch 8, 96 px", patch_size=8),
        _vit("vit_small_p8", "vit_small_patch16_224", 96, "ViT-S, patch 8, 96 px", patch_size=8),
    ]
}
_ALIASES = {"vit_tiny16": "vit_tiny", "vit_small16": "vit_small", "vit_base16": "vit_base"}


def list_archs() -> list[str]:
    return sorted(_ARCHS)


def arch_spec(name: str) -> ArchSpec:
    name = _ALIASES.get(name, name)
    if name not in _ARCHS:
        raise UnknownArchitectureError(f"unknown architecture {name!r}; choose one of: {', '.join(list_archs())}")
    return _ARCHS[name]


class Encoder(nn.Module):
    """A backbone without classifier: `forward(x) -> (B, embed_dim)` pooled features."""

    def __init__(self, arch: str, model: nn.Module, preprocessing: Preprocessing, model_args: dict[str, Any]):
        super().__init__()
        self.arch = arch
        self.model = model
        self.preprocessing = preprocessing
        self.model_args = dict(model_args)

    @property
    def embed_dim(self) -> int:
        return int(self.model.num_features)

    @property
    def is_vit(self) -> bool:
        return hasattr(self.model, "blocks") and hasattr(self.model, "patch_embed")

    @property
    def patch_size(self) -> int | None:
        if not self.is_vit:
            return None
        return int(self.model.patch_embed.patch_size[0])

    @property
    def num_heads(self) -> int | None:
        return int(self.model.blocks[-1].attn.num_heads) if self.is_vit else None

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def feature_map(self, x: Tensor) -> Tensor:
        """Unpooled features: `(B, C, h, w)` for CNNs, `(B, C, h, w)` patch grid for ViTs."""
        if self.is_vit:
            tokens = self.patch_tokens(x)
            h, w = self._grid(x)
            return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return self.model.forward_features(x)

    # ViT only -------------------------------------------------------------------------------------
    def _require_vit(self, what: str) -> None:
        if not self.is_vit:
            raise TypeError(f"{what} needs a ViT encoder; {self.arch!r} is a CNN")

    def _grid(self, x: Tensor) -> tuple[int, int]:
        p = self.patch_size
        return x.shape[-2] // p, x.shape[-1] // p

    def _tokens_before_last_block(self, x: Tensor) -> Tensor:
        m = self.model
        x = m.patch_embed(x)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        for blk in m.blocks[:-1]:
            x = blk(x)
        return x

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Softmax attention of the last block, `(B, heads, N+1, N+1)`, token 0 being CLS."""
        self._require_vit("get_last_selfattention")
        attn = self.model.blocks[-1].attn
        y = self.model.blocks[-1].norm1(self._tokens_before_last_block(x))
        b, n, _ = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def cls_attention(self, x: Tensor) -> Tensor:
        """The CLS token's last-block attention over patches, `(B, heads, h*w)`."""
        a = self.get_last_selfattention(x)
        return a[:, :, 0, self.model.num_prefix_tokens:]

    def patch_tokens(self, x: Tensor) -> Tensor:
        """Final-norm patch tokens without the prefix (CLS) tokens, `(B, h*w, D)`."""
        self._require_vit("patch_tokens")
        return self.model.forward_features(x)[:, self.model.num_prefix_tokens:]


def _cifar_stem(model: nn.Module) -> None:
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def default_preprocessing(spec: ArchSpec, image_size: int | None = None, dataset: str | None = None) -> Preprocessing:
    size = image_size or spec.image_size
    if dataset == "cifar10":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    # Small images are used whole (no centre crop); 224 px follows the ImageNet resize-256/crop-224 habit.
    crop_pct = 1.0 if size <= 96 else 0.875
    return Preprocessing(input_size=(3, size, size), mean=mean, std=std, crop_pct=crop_pct)


def build_encoder(
    arch: str,
    image_size: int | None = None,
    preprocessing: Preprocessing | None = None,
    dataset: str | None = None,
    **extra_args: Any,
) -> Encoder:
    """A randomly initialised encoder of architecture `arch` (one of `list_archs()`)."""
    spec = arch_spec(arch)
    args = dict(spec.timm_args)
    if image_size is not None and spec.is_vit:
        args["img_size"] = image_size
    args.update(extra_args)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **args)
    if spec.cifar_stem:
        _cifar_stem(model)
    pre = preprocessing or default_preprocessing(spec, image_size, dataset)
    return Encoder(spec.name, model, pre, model_args=args)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def random_input(encoder: Encoder, batch: int = 2, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *encoder.preprocessing.input_size, generator=g)
