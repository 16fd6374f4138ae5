"""View pipelines, described as data (`ViewSpec`) and built two ways from the same description:
per sample on the CPU with torchvision transforms v2, or per batch on the GPU with kornia.

A method asks for views through `Method.view_spec()`: two symmetric views (SimCLR, MoCo), two
asymmetric ones (BYOL: blur and solarize differ per view), or several sizes (SwAV/DINO multi-crop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from training.errors import ConfigError

CropFn = Callable[[Tensor, int, "ViewConfig"], Tensor]


@dataclass(frozen=True)
class ViewConfig:
    """One view's augmentation: crop, flip, colour, blur, solarize, each with its probability."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


@dataclass(frozen=True)
class ViewSpec:
    """All views of one training sample, in the order the method's `forward` receives them."""

    views: tuple[ViewConfig, ...]

    @property
    def num_views(self) -> int:
        return len(self.views)


def _blur_p(size: int, p: float) -> float:
    # SimCLR leaves blur out on CIFAR: at 32 px it wipes out most of the signal.
    return p if size > 32 else 0.0


def simclr_views(size: int, strength: float = 1.0) -> ViewSpec:
    """SimCLR (Chen et al. 2020, appendix A): crop 0.08-1, flip, jitter 0.8*s (hue 0.2*s) with p 0.8,
    grayscale 0.2, blur 0.5 above 32 px."""
    s = strength
    v = ViewConfig(size, scale=(0.08, 1.0), jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), blur_p=_blur_p(size, 0.5))
    return ViewSpec((v, v))


def mocov2_views(size: int) -> ViewSpec:
    """MoCo v2: crop 0.2-1, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur 0.5, flip."""
    v = ViewConfig(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=_blur_p(size, 0.5))
    return ViewSpec((v, v))


def mocov1_views(size: int) -> ViewSpec:
    """MoCo v1 / InstDisc: crop 0.2-1, grayscale 0.2, jitter 0.4 always, flip; no blur."""
    v = ViewConfig(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0)
    return ViewSpec((v, v))


def byol_views(size: int) -> ViewSpec:
    """BYOL (Grill et al. 2020, table 6): asymmetric blur (1.0 / 0.1) and solarize (0 / 0.2)."""
    base = ViewConfig(size, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1))
    return ViewSpec((replace(base, blur_p=_blur_p(size, 1.0)), replace(base, blur_p=_blur_p(size, 0.1), solarize_p=0.2)))


def multicrop_views(global_size: int, local_size: int, num_local: int,
                    global_scale: tuple[float, float] = (0.14, 1.0),
                    local_scale: tuple[float, float] = (0.05, 0.14), asymmetric: bool = False) -> ViewSpec:
    """SwAV/DINO multi-crop: 2 large crops and `num_local` small ones. `asymmetric` uses DINO's
    per-view blur (1.0 / 0.1 / 0.5 for local) and solarize (0.2 on the second global view)."""
    g = ViewConfig(global_size, scale=global_scale, jitter=(0.4, 0.4, 0.2, 0.1))
    loc = ViewConfig(local_size, scale=local_scale, jitter=(0.4, 0.4, 0.2, 0.1))
    if asymmetric:
        g1, g2 = replace(g, blur_p=_blur_p(global_size, 1.0)), replace(g, blur_p=_blur_p(global_size, 0.1),
                                                                     solarize_p=0.2)
        loc = replace(loc, blur_p=_blur_p(local_size, 0.5))
    else:
        g1 = g2 = replace(g, blur_p=_blur_p(global_size, 0.5))
        loc = replace(loc, blur_p=_blur_p(local_size, 0.5))
    return ViewSpec((g1, g2, *([loc] * num_local)))


def multicrop_for_image(image_size: int, num_local: int, local_size: int, default_local_small: int,
                        default_local_large: int, global_scale: tuple[float, float],
                        local_scale: tuple[float, float], asymmetric: bool = False) -> ViewSpec:
    """Multi-crop sized to the image: below 224 px the small crops are half the image and
    `default_local_small` in number, else 96 px and `default_local_large` (negative / 0 mean: the default)."""
    small = image_size < 224
    n = num_local if num_local >= 0 else (default_local_small if small else default_local_large)
    size = local_size or (image_size // 2 if small else 96)
    return multicrop_views(image_size, size, n, global_scale, local_scale, asymmetric=asymmetric)


def with_color_strength(spec: ViewSpec, strength: float) -> ViewSpec:
    """`spec` with its colour distortion scaled, SimCLR's "strength" knob for any method: 1 keeps the
    method's views, 0.5 halves the jitter magnitudes, 0 turns jitter, grayscale and solarize off (a run far
    too short to learn colour invariance keeps the colour cues instead)."""
    if strength < 0:
        raise ConfigError(f"--color-strength {strength}: use a value >= 0 (1 keeps the method's views)")
    if strength == 1:
        return spec
    off = strength == 0

    def scaled(vc: ViewConfig) -> ViewConfig:
        b, c, s, h = (strength * j for j in vc.jitter)
        return replace(vc, jitter=(b, c, s, min(h, 0.5)), jitter_p=0.0 if off else vc.jitter_p,
                       grayscale_p=0.0 if off else vc.grayscale_p, solarize_p=0.0 if off else vc.solarize_p)

    return ViewSpec(tuple(scaled(vc) for vc in spec.views))


def blur_kernel_size(size: int) -> int:
    k = max(3, int(0.1 * size))  # SimCLR: 10% of the image side
    return k if k % 2 == 1 else k + 1


def _random_crop(image: Tensor, vc: ViewConfig) -> Tensor:
    return v2.RandomResizedCrop(vc.size, scale=vc.scale, ratio=vc.ratio, antialias=True)(image)


def build_cpu_transform(vc: ViewConfig, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Everything after the crop, as a torchvision v2 pipeline on a uint8 CHW tensor."""
    b, c, s, h = vc.jitter
    ops: list[nn.Module] = [v2.RandomHorizontalFlip(vc.flip_p)]
    if vc.jitter_p > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=vc.jitter_p))
    if vc.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(vc.grayscale_p))
    if vc.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(vc.size), sigma=vc.blur_sigma)], p=vc.blur_p))
    if vc.solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=vc.solarize_p))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class CPUViewMaker:
    """Turns one uint8 CHW image into the list of normalised views a `ViewSpec` describes.

    `crop_fn` replaces the random resized crop (ContrastiveCrop plugs in here)."""

    def __init__(self, spec: ViewSpec, mean: Sequence[float], std: Sequence[float], crop_fn: CropFn | None = None):
        self.spec = spec
        self.transforms = [build_cpu_transform(vc, mean, std) for vc in spec.views]
        self.crop_fn = crop_fn

    def __call__(self, image: Tensor, index: int = -1) -> list[Tensor]:
        out = []
        for vc, t in zip(self.spec.views, self.transforms):
            crop = self.crop_fn(image, index, vc) if self.crop_fn is not None else _random_crop(image, vc)
            out.append(t(crop))
        return out


class GPUViewMaker(nn.Module):
    """The same views made per batch on the device with kornia (per-sample random parameters)."""

    def __init__(self, spec: ViewSpec, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        try:
            import kornia.augmentation as K
        except ImportError as e:  # pragma: no cover - kornia ships with the [gpu] extra
            raise ConfigError("GPU augmentation needs kornia: pip install 'ssl-zoo[gpu]' or pass --no-gpu-augment") from e
        self.spec = spec
        pipelines = []
        for vc in spec.views:
            b, c, s, h = vc.jitter
            ops: list[nn.Module] = [K.RandomResizedCrop((vc.size, vc.size), scale=vc.scale, ratio=vc.ratio),
                                    K.RandomHorizontalFlip(p=vc.flip_p)]
            if vc.jitter_p > 0:
                ops.append(K.ColorJitter(b, c, s, h, p=vc.jitter_p))
            if vc.grayscale_p > 0:
                ops.append(K.RandomGrayscale(p=vc.grayscale_p))
            if vc.blur_p > 0:
                k = blur_kernel_size(vc.size)
                ops.append(K.RandomGaussianBlur((k, k), vc.blur_sigma, p=vc.blur_p))
            if vc.solarize_p > 0:
                ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=vc.solarize_p))
            ops.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)))
            pipelines.append(nn.Sequential(*ops))
        self.pipelines = nn.ModuleList(pipelines)

    @torch.no_grad()
    def forward(self, images_uint8: Tensor) -> list[Tensor]:
        x = images_uint8.float().div_(255)
        return [p(x) for p in self.pipelines]


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 1.0) -> nn.Module:
    """Resize (shorter side to size / crop_pct), centre crop, normalise: for kNN / linear / serving."""
    resize = int(round(size / crop_pct))
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


# Presets of InstDisc, CMC and CPC (methods-a) -------------------------------------------------------
def instdisc_views(size: int) -> ViewSpec:
    """InstDisc (Wu et al. 2018): one view per image, augmented as MoCo v1 later did."""
    return ViewSpec(mocov1_views(size).views[:1])


def cmc_views(size: int) -> ViewSpec:
    """CMC (Tian et al. 2019), L / ab: one view, crop 0.2-1 and flip only; the two 'views' are its
    colour channels, so no colour augmentation."""
    return ViewSpec((ViewConfig(size, scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0),))


def cpc_views(size: int) -> ViewSpec:
    """CPC v2 (Henaff et al. 2020) on the whole image: one view, crop 0.2-1, flip, colour jitter 0.8 and
    grayscale 0.2 (the paper's colour dropping); their per-patch augmentations are not reproduced."""
    return ViewSpec((ViewConfig(size, scale=(0.2, 1.0)),))
