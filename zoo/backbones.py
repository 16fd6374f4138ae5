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
    kind: str = ""  # "" for a plain timm backbone; a composite kind (see COMPOSITE_KINDS) otherwise

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
    if name not in _ARCHS and _composite_spec(name) is not None:
        return _composite_spec(name)  # type: ignore[return-value]
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
    if spec.kind:
        pre = preprocessing or default_preprocessing(spec, image_size, dataset)
        return COMPOSITE_KINDS[spec.kind](spec, args, pre)
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


# ====================================================================================================
# Composite encoders (added for CPC, CMC and SimCLR v2). Each is named "<kind>_<base arch>", e.g.
# "cpc_resnet18_cifar", and keeps its own parameters (grid size, head widths) in `model_args`, so
# save_encoder / load_encoder round-trip it like any other: same forward contract, (B, 3, H, W)
# normalised RGB in, (B, D) out. Their weights are the base timm model's, under a prefix.
# ====================================================================================================


def _base_model(spec: ArchSpec, args: dict[str, Any]) -> nn.Module:
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **args)
    if spec.cifar_stem:
        in_chans = model.conv1.in_channels
        model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def patch_grid_geometry(image_size: int, grid: int) -> tuple[int, int]:
    """(patch, stride) of a `grid` x `grid` lattice of patches overlapping by half (CPC v2: 64 px patches,
    stride 32, on 256 px images gives 7 x 7; 8 px patches, stride 4, on 32 px images likewise)."""
    stride = image_size // (grid + 1)
    if stride < 1:
        raise ValueError(f"a {grid}x{grid} patch grid does not fit in {image_size} px images; lower the grid")
    return 2 * stride, stride


class PatchGridEncoder(Encoder):
    """CPC v2's encoder: the image cut into a grid of half-overlapping patches, each encoded by the
    backbone and pooled to one vector; `forward` averages the grid to `(B, D)`."""

    @property
    def grid(self) -> int:
        return int(self.model_args["grid"])

    def patches(self, x: Tensor) -> Tensor:
        """`(B * grid * grid, C, P, P)` patches, row-major over the grid."""
        p, s = patch_grid_geometry(min(x.shape[-2:]), self.grid)
        g = self.grid
        x = x[..., : s * (g - 1) + p, : s * (g - 1) + p]
        t = x.unfold(2, p, s).unfold(3, p, s)  # (B, C, g, g, P, P)
        return t.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1], p, p)

    def patch_features(self, x: Tensor) -> Tensor:
        """`(B, grid, grid, D)` pooled features of each patch."""
        f = self.model(self.patches(x))
        return f.view(x.shape[0], self.grid, self.grid, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.patch_features(x).mean(dim=(1, 2))


def _build_patch_grid(spec: ArchSpec, args: dict[str, Any], pre: Preprocessing) -> Encoder:
    grid = int(args.pop("grid", 7))
    model = _base_model(spec, args)
    return PatchGridEncoder(spec.name, model, pre, model_args={**args, "grid": grid})


# CMC's Lab normalisation: each channel's range mapped to about [-1, 1] (L in [0, 100]; a, b in about
# [-86, 98] and [-108, 94] for sRGB inputs).
_LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
_LAB_STD = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65 = (0.950456, 1.0, 1.088754)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1], `(B, 3, H, W)` -> CIE Lab (D65): L in [0, 100], a and b roughly in [-110, 110]."""
    rgb = rgb.clamp(0, 1)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    m = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    xyz = xyz / torch.tensor(_D65, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-8).pow(1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


class TwoStreams(nn.Module):
    """CMC's two networks: `l` sees the L channel, `ab` the two colour channels."""

    def __init__(self, l_net: nn.Module, ab_net: nn.Module):
        super().__init__()
        self.l = l_net
        self.ab = ab_net
        self.num_features = int(l_net.num_features) + int(ab_net.num_features)


class LabSplitEncoder(Encoder):
    """CMC's encoder: RGB -> Lab inside the network, L and ab through two (half-width) backbones, their
    pooled features concatenated, `(B, D_l + D_ab)`."""

    def lab_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.preprocessing.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        lab = rgb_to_lab(x * std + mean)
        lab = (lab - lab.new_tensor(_LAB_MEAN).view(1, 3, 1, 1)) / lab.new_tensor(_LAB_STD).view(1, 3, 1, 1)
        return lab[:, :1], lab[:, 1:]

    def forward_views(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(B, D_l)` and `(B, D_ab)`: the features CMC contrasts against each other."""
        l_in, ab_in = self.lab_inputs(x)
        return self.model.l(l_in), self.model.ab(ab_in)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.forward_views(x), dim=1)

    def feature_map(self, x: Tensor) -> Tensor:
        l_in, ab_in = self.lab_inputs(x)
        return torch.cat([self.model.l.forward_features(l_in), self.model.ab.forward_features(ab_in)], dim=1)


def _build_lab_split(spec: ArchSpec, args: dict[str, Any], pre: Preprocessing) -> Encoder:
    if spec.is_vit:
        raise UnknownArchitectureError(f"{spec.name}: the CMC Lab split is built for ResNets; pick a cmc_resnet* arch")
    half = bool(args.pop("half_width", True))
    timm_args = dict(args)
    if half:
        # Two half-width networks: together as wide as one (CMC's "halves" of AlexNet / ResNet).
        timm_args.update(channels=(32, 64, 128, 256), stem_width=32)
    model = TwoStreams(_base_model(spec, {**timm_args, "in_chans": 1}), _base_model(spec, {**timm_args, "in_chans": 2}))
    return LabSplitEncoder(spec.name, model, pre, model_args={**args, "half_width": half})


class BackboneWithHead(nn.Module):
    """A backbone followed by the first layers of a projector (Linear -> BatchNorm -> ReLU each)."""

    def __init__(self, backbone: nn.Module, head_dims: list[int]):
        super().__init__()
        self.backbone = backbone
        dims = [int(backbone.num_features), *head_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*layers)
        self.num_features = dims[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def _build_with_head(spec: ArchSpec, args: dict[str, Any], pre: Preprocessing) -> Encoder:
    head_dims = [int(d) for d in args.pop("head_dims", [])]
    model = BackboneWithHead(_base_model(spec, args), head_dims)
    return Encoder(spec.name, model, pre, model_args={**args, "head_dims": head_dims})


COMPOSITE_KINDS = {"cpc": _build_patch_grid, "cmc": _build_lab_split, "head": _build_with_head}


def _composite_spec(name: str) -> ArchSpec | None:
    kind, _, base = name.partition("_")
    if kind not in COMPOSITE_KINDS or _ALIASES.get(base, base) not in _ARCHS:
        return None
    b = _ARCHS[_ALIASES.get(base, base)]
    return ArchSpec(name, b.timm_name, b.image_size, dict(b.timm_args), b.cifar_stem,
                    f"{kind} composite of {b.description}", kind=kind)
