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
    num_workers: int = 0
    amp: bool | None = None  # default: bf16 autocast on CUDA, off on CPU
    channels_last: bool | None = None  # default: on for CNNs
    compile: bool = False
    sync_bn: bool = False
    gpu_augment: bool | None = None  # default: on when training on CUDA
    checkpoint_every: int = 500
    log_every: int = 10
    max_steps: int | None = None  # stop (and checkpoint) after this many steps in total
    progress: bool = True
    method_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
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
