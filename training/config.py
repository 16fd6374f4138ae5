"""Configuration: the common training options, and one dataclass per method with its paper's defaults.

Learning rates are given for a batch of 256 and scaled linearly with the global batch (Goyal et al. 2017),
as SimCLR, MoCo, BYOL, SwAV and DINO all do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from training.errors import ConfigError


@dataclass
class MethodConfig:
    """Defaults shared by every method; each method's dataclass overrides what its paper says."""

    optimizer: ClassVar[str] = "sgd"  # sgd | lars | adamw
    base_lr: ClassVar[float] = 0.05  # for a batch of 256
    weight_decay: ClassVar[float] = 1e-4
    momentum: ClassVar[float] = 0.9
    warmup_epochs: ClassVar[float] = 0.0
    final_weight_decay: ClassVar[float | None] = None  # cosine weight-decay schedule to this value (DINO)
    # The view pipeline the paper uses: "simclr" | "mocov2" | "mocov1" | "byol" | "multicrop" | ...
    views: ClassVar[str] = "simclr"


@dataclass
class SimCLRConfig(MethodConfig):
    """SimCLR v1 (Chen et al. 2020): LARS, lr 0.3 x B/256, wd 1e-6, 10 warm-up epochs.

    The paper's ImageNet temperature is 0.1 at batch 4096; its CIFAR-10 runs use 0.5, which also suits the
    small batches of CPU runs."""

    optimizer: ClassVar[str] = "lars"
    base_lr: ClassVar[float] = 0.3
    weight_decay: ClassVar[float] = 1e-6
    warmup_epochs: ClassVar[float] = 10.0
    views: ClassVar[str] = "simclr"
    temperature: float = 0.5
    proj_hidden_dim: int = 2048
    proj_dim: int = 128


@dataclass
class MoCoV2Config(MethodConfig):
    """MoCo v2 (Chen et al. 2020): SGD lr 0.03 x B/256, wd 1e-4, queue 65536, m 0.999, T 0.2, MLP head."""

    optimizer: ClassVar[str] = "sgd"
    base_lr: ClassVar[float] = 0.03
    weight_decay: ClassVar[float] = 1e-4
    warmup_epochs: ClassVar[float] = 0.0
    views: ClassVar[str] = "mocov2"
    queue_size: int = 65536
    momentum_ema: float = 0.999
    temperature: float = 0.2
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    # Without DDP there is no cross-GPU shuffle: the key batch is shuffled and normalised in this many
    # groups instead, so a query and its key never share batch-norm statistics.
    shuffle_bn_splits: int = 8


CROPS = ("random", "contrastive")


@dataclass
class TrainConfig:
    """Everything `python -m training fit` takes. `None` means: the method's paper default."""

    method: str = "simclr"
    arch: str = "resnet18_cifar"
    data: str = "cifar10"
    out: str = "runs/run"
    data_dir: str | None = None
    epochs: int = 1
    batch_size: int = 256
    limit_train: int | None = None
    image_size: int | None = None
    device: str | None = None
    seed: int = 0
    resume: bool = False
    optimizer: str | None = None
    lr: float | None = None  # absolute; default base_lr x batch/256
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    num_workers: int | None = None  # default: one fewer than the CPU cores (at least 1), at most 8
    amp: bool | None = None  # default: bf16 autocast on CUDA, off on CPU
    channels_last: bool | None = None  # default: on for CNNs
    compile: bool = False
    sync_bn: bool = False
    gpu_augment: bool | None = None  # default: on when training on CUDA
    checkpoint_every: int = 500
    log_every: int = 10
    max_steps: int | None = None  # stop (and checkpoint) after this many steps in total
    progress: bool = True
    crop: str = "random"  # random | contrastive (ContrastiveCrop, Peng et al. 2022)
    color_strength: float = 1.0  # scales the method's colour distortion; 0: none (augment.with_color_strength)
    method_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.crop not in CROPS:
            raise ConfigError(f"--crop {self.crop!r} is not known; choose one of: {', '.join(CROPS)}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2 (contrastive methods need pairs); got {self.batch_size}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1; got {self.epochs}")
        if self.limit_train is not None and self.limit_train < self.batch_size:
            raise ConfigError(f"--limit-train {self.limit_train} is smaller than --batch-size {self.batch_size}: "
                              "no full batch can be formed; raise --limit-train or lower --batch-size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_method_config(cls: type[MethodConfig], options: dict[str, Any]) -> MethodConfig:
    """Instantiate a method's config, overriding defaults with `options` (values parsed from strings)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(f"unknown option {key!r} for {cls.__name__}; known: {', '.join(sorted(fields)) or 'none'}")
        default = fields[key].default
        kwargs[key] = _parse_like(value, default, key)
    return cls(**kwargs)


def _parse_like(value: Any, default: Any, key: str) -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(type(default[0])(v) for v in value.split(","))
    except ValueError as e:
        raise ConfigError(f"option {key}={value!r}: expected a {type(default).__name__}") from e
    return value


# --- SwAV, BYOL, SimSiam, DINO, Barlow Twins (methods engineer B) ----------------------------------------------

@dataclass
class SwAVConfig(MethodConfig):
    """SwAV (Caron et al. 2020): LARS lr 4.8 at batch 4096 (0.3 x B/256), wd 1e-6, 10 warm-up epochs;
    2048-128 projector, 3000 prototypes, temperature 0.1, Sinkhorn eps 0.05 x 3 iterations,
    multi-crop 2x224 (scale 0.14-1) + 6x96 (0.05-0.14); prototypes frozen for the first epoch (the authors
    freeze 313 iterations, one epoch at batch 4096; at most a tenth of a short run here). Small data: fewer prototypes (e.g. -o num_prototypes=100
    on CIFAR-10), and a queue (the authors use 3840 for batches of 256, from epoch 15)."""

    optimizer: ClassVar[str] = "lars"
    base_lr: ClassVar[float] = 0.3
    weight_decay: ClassVar[float] = 1e-6
    warmup_epochs: ClassVar[float] = 10.0
    views: ClassVar[str] = "multicrop"
    num_prototypes: int = 3000
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    num_local_crops: int = -1  # -1: 6 at 224 px and above, 4 below (CPU-sized runs at 32 / 96 px)
    local_crop_size: int = 0  # 0: 96 at 224 px and above, half the image size below
    global_crops_scale: tuple[float, float] = (0.14, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.14)
    freeze_prototypes_epochs: float = 1.0
    queue_length: int = 0  # 0: no queue
    queue_start_epoch: int = 15


@dataclass
class BYOLConfig(MethodConfig):
    """BYOL (Grill et al. 2020): LARS lr 0.2 x B/256, wd 1.5e-6, 10 warm-up epochs; projector and
    predictor 4096-256; target EMA tau from 0.996 to 1 (cosine); asymmetric views (blur 1.0 / 0.1,
    solarize 0 / 0.2)."""

    optimizer: ClassVar[str] = "lars"
    base_lr: ClassVar[float] = 0.2
    weight_decay: ClassVar[float] = 1.5e-6
    warmup_epochs: ClassVar[float] = 10.0
    views: ClassVar[str] = "byol"
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    momentum_ema: float = 0.996  # tau_base; rises to 1 with a cosine over training


@dataclass
class SimSiamConfig(MethodConfig):
    """SimSiam (Chen & He 2021): SGD lr 0.05 x B/256, momentum 0.9, wd 1e-4, no warm-up; 3-layer
    2048-d projector with BN on its output, 512-d predictor bottleneck, the predictor's lr held fixed
    (the authors' --fix-pred-lr, used for their reported results); MoCo v2 views."""

    optimizer: ClassVar[str] = "sgd"
    base_lr: ClassVar[float] = 0.05
    weight_decay: ClassVar[float] = 1e-4
    warmup_epochs: ClassVar[float] = 0.0
    views: ClassVar[str] = "mocov2"
    proj_dim: int = 2048
    proj_layers: int = 3  # the paper's CIFAR-10 runs use 2
    pred_hidden_dim: int = 512
    fix_pred_lr: bool = True


@dataclass
class DINOConfig(MethodConfig):
    """DINO (Caron et al. 2021): AdamW lr 0.0005 x B/256, 10 warm-up epochs, wd 0.04 -> 0.4 (cosine);
    head 2048-2048-256 then a weight-normalised layer to 65536 (fewer for small data, e.g.
    -o out_dim=4096), student temperature 0.1, teacher 0.04 (warm-up schedule from warmup_teacher_temp
    over 30 epochs; the paper's long ViT-S runs go 0.04 -> 0.07), centre momentum 0.9, teacher EMA
    0.996 -> 1, gradients clipped at 3.0 per parameter, last layer frozen for epoch 1 (at most a tenth of
    a short run); multi-crop 2 global (scale 0.4-1) + 10 local (0.05-0.4) at 224 px, 2 + 6 at half size
    below (2x32 + 6x16 on CIFAR-10, 2x96 + 6x48 on Imagenette 96 px). The authors' ResNet-50 run uses SGD
    lr 0.03, wd 1e-4 and SwAV's crop scales: pass --optimizer sgd --lr ... -o global_crops_scale=0.14,1 ... for it."""

    optimizer: ClassVar[str] = "adamw"
    base_lr: ClassVar[float] = 0.0005
    weight_decay: ClassVar[float] = 0.04
    final_weight_decay: ClassVar[float | None] = 0.4
    warmup_epochs: ClassVar[float] = 10.0
    views: ClassVar[str] = "multicrop"
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    momentum_teacher: float = 0.996
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    student_temp: float = 0.1
    center_momentum: float = 0.9
    num_local_crops: int = -1  # -1: 10 at 224 px and above, 6 below
    local_crop_size: int = 0  # 0: 96 at 224 px and above, half the image size below
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    clip_grad: float = 3.0  # 0: no clipping
    freeze_last_layer_epochs: int = 1


@dataclass
class BarlowTwinsConfig(MethodConfig):
    """Barlow Twins (Zbontar et al. 2021): LARS lr 0.2 x B/256 for weights and 0.0048 x B/256 for biases
    and norms, wd 1.5e-6, 10 warm-up epochs; 3-layer 8192-d projector (smaller for small data, e.g.
    -o proj_dim=1024), lambda 0.0051; BYOL's asymmetric views."""

    optimizer: ClassVar[str] = "lars"
    base_lr: ClassVar[float] = 0.2
    bias_lr: ClassVar[float] = 0.0048
    weight_decay: ClassVar[float] = 1.5e-6
    warmup_epochs: ClassVar[float] = 10.0
    views: ClassVar[str] = "byol"
    proj_dim: int = 8192
    proj_layers: int = 3
    lambd: float = 0.0051


# ====================================================================================================
# InstDisc, InvaSpread, CPC v2, CMC, MoCo v1, MoCo v3, SimCLR v2 (methods-a). Sources of each default are
# named in the docstrings; "ours" marks a choice the paper leaves open or one made for small data.
# ====================================================================================================


@dataclass
class InstDiscConfig(MethodConfig):
    """InstDisc (Wu et al. 2018): SGD lr 0.03 at batch 256, wd 5e-4, 4096 NCE noise samples, T 0.07,
    128-d features, memory momentum 0.5; one view (crop 0.2-1, jitter 0.4, grayscale 0.2, flip)."""

    optimizer: ClassVar[str] = "sgd"
    base_lr: ClassVar[float] = 0.03
    weight_decay: ClassVar[float] = 5e-4
    views: ClassVar[str] = "instdisc"
    loss: str = "nce"  # nce | softmax (the non-parametric softmax over the sampled entries)
    num_negatives: int = 4096
    temperature: float = 0.07
    memory_momentum: float = 0.5
    proj_dim: int = 128


@dataclass
class InvaSpreadConfig(MethodConfig):
    """InvaSpread (Ye et al. 2019): SGD lr 0.03 at batch 128 (0.06 per 256), wd 5e-4, T 0.1, 128-d
    linear embedding, two views per image, in-batch negatives only."""

    optimizer: ClassVar[str] = "sgd"
    base_lr: ClassVar[float] = 0.06
    weight_decay: ClassVar[float] = 5e-4
    views: ClassVar[str] = "mocov1"
    temperature: float = 0.1
    proj_dim: int = 128


@dataclass
class CPCConfig(MethodConfig):
    """CPC v2 (Henaff et al. 2020): a 7x7 grid of half-overlapping patches, a masked-convolution context
    network, InfoNCE over the batch's patches. Adam(W) as in the CPC papers; the lr, the context
    width and depth and the prediction range (2 to 5 rows below, skipping the half-overlapping next
    row) are ours."""

    optimizer: ClassVar[str] = "adamw"
    base_lr: ClassVar[float] = 4e-4
    weight_decay: ClassVar[float] = 1e-5
    views: ClassVar[str] = "cpc"
    grid: int = 7
    context_dim: int = 512
    context_blocks: int = 3
    first_step: int = 2
    last_step: int = 5


@dataclass
class CMCConfig(MethodConfig):
    """CMC (Tian et al. 2019), L / ab views: SGD lr 0.03, wd 1e-4, two half-width networks, 128-d linear
    heads, memory banks with momentum 0.5, NCE with T 0.07 (16384 noise samples on ImageNet; 4096 here
    by default, as InstDisc); crop and flip only (colour is what is split)."""

    optimizer: ClassVar[str] = "sgd"
    base_lr: ClassVar[float] = 0.03
    weight_decay: ClassVar[float] = 1e-4
    views: ClassVar[str] = "cmc"
    loss: str = "nce"  # nce | softmax
    num_negatives: int = 4096
    temperature: float = 0.07
    memory_momentum: float = 0.5
    proj_dim: int = 128
    half_width: bool = True


@dataclass
class MoCoV1Config(MethodConfig):
    """MoCo v1 (He et al. 2020): SGD lr 0.03 at batch 256, wd 1e-4, queue 65536, m 0.999, T 0.07,
    128-d linear head, crop 0.2-1 + jitter 0.4 + grayscale 0.2 + flip."""

    optimizer: ClassVar[str] = "sgd"
    base_lr: ClassVar[float] = 0.03
    weight_decay: ClassVar[float] = 1e-4
    views: ClassVar[str] = "mocov1"
    queue_size: int = 65536
    momentum_ema: float = 0.999
    temperature: float = 0.07
    proj_dim: int = 128
    shuffle_bn_splits: int = 8


@dataclass
class MoCoV3Config(MethodConfig):
    """MoCo v3 (Chen, Xie, He 2021). ResNet: LARS lr 0.6 per 256 (their blr), wd 1e-6, 10 warm-up
    epochs, T 1.0. ViT (applied by the method when the backbone is a ViT): AdamW lr 1.5e-4 per 256,
    wd 0.1, 40 warm-up epochs, T 0.2. Both: m 0.99 -> 1 (cosine), BYOL's augmentations, 3-layer
    projector 4096-4096-256 and 2-layer predictor 4096-256 with BN."""

    optimizer: ClassVar[str] = "lars"
    base_lr: ClassVar[float] = 0.6
    weight_decay: ClassVar[float] = 1e-6
    warmup_epochs: ClassVar[float] = 10.0
    views: ClassVar[str] = "byol"
    temperature: float | None = None  # None: 1.0 for ResNets, 0.2 for ViTs
    momentum_ema: float = 0.99
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    proj_layers: int = 3
    pred_hidden_dim: int = 4096
    freeze_patch_embed: bool = False  # ViT: keep the random patch projection fixed (their stability trick)


@dataclass
class SimCLRV2Config(MethodConfig):
    """SimCLR v2 (Chen et al. 2020b): LARS lr 0.3 per 256, wd 1e-4, 10 warm-up epochs, a 3-layer
    projector (hidden = backbone width, 128 out, BN on every layer). The paper's temperature is 0.1
    at batch 4096; 0.5 (SimCLR's CIFAR value) is the default here for small batches.
    `export_head_layers=1` exports the backbone plus the projector's first layer ("fine-tuning from
    the middle layer"); `momentum_encoder=true` adds MoCo's momentum encoder and queue."""

    optimizer: ClassVar[str] = "lars"
    base_lr: ClassVar[float] = 0.3
    weight_decay: ClassVar[float] = 1e-4
    warmup_epochs: ClassVar[float] = 10.0
    views: ClassVar[str] = "simclr"
    temperature: float = 0.5
    proj_hidden_dim: int = 0  # 0: the backbone's width
    proj_dim: int = 128
    proj_layers: int = 3
    export_head_layers: int = 0
    momentum_encoder: bool = False
    queue_size: int = 65536
    momentum_ema: float = 0.999
