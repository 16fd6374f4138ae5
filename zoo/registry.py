"""The model registry: every loadable name described as data (a frozen `ModelSpec`), never as code paths.

Three kinds of entries:
- built-in: the weights each method's authors released (official download URLs, `zoo.convert` layouts);
- registered at run time: `register(spec)` (also usable as a decorator on a function returning a spec) or
  `register_manifest(path)` for a JSON/TOML file of specs; `$ZOO_HOME/manifest.{json,toml}` is read at start;
- local model folders: every folder under `$ZOO_HOME/models/` holding `config.json` + `model.safetensors`.

sha256 values are stored only where the authors publish one; where they do not (all the built-ins below, as
far as we know), the digest of the first download is recorded next to the cached file and checked on every
later download (trust on first use; see `zoo.weights`).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.backbones import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, arch_spec
from zoo.errors import UnknownModelError, ZooError


def zoo_home() -> Path:
    """The zoo's cache and home folder: `$ZOO_HOME`, default `~/.cache/ssl-zoo`."""
    return Path(os.environ.get("ZOO_HOME") or Path.home() / ".cache" / "ssl-zoo").expanduser()


@dataclass(frozen=True)
class WeightSource:
    """One file of weights and how to read it."""

    layout: str  # the converter in zoo.convert that reads this file ("dino", "moco", ..., "folder")
    filename: str  # name of the file in the download cache
    url: str | None = None  # direct download; None when there is none (then `note` says how to get the file)
    sha256: str | None = None  # only where the authors publish it; else recorded on first download
    upstream: str = ""  # who released the weights (repository or official artefact)
    note: str = ""  # provenance details, or how to obtain the file when `url` is None


@dataclass(frozen=True)
class Reported:
    """A number the authors report (not measured by us), with where it is reported."""

    metric: str  # knn_top1, linear_top1, ...
    value: float
    dataset: str
    source: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    method: str
    arch: str  # one of zoo.backbones.list_archs()
    dataset: str
    embed_dim: int
    patch_size: int | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    sources: tuple[WeightSource, ...] = ()
    license: str = "unknown"
    paper: str = ""
    reported: tuple[Reported, ...] = ()
    model_args: dict[str, Any] = field(default_factory=dict)  # extra timm args (e.g. MoCo v3 ViT-S: 12 heads)
    epochs: int | None = None
    folder: str | None = None  # for local model folders: where the folder is
    description: str = ""

    @property
    def source_summary(self) -> str:
        if self.folder:
            return f"local folder {self.folder}"
        if not self.sources:
            return "-"
        s = self.sources[0]
        return s.url or f"manual: converted from {s.upstream}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "method": self.method, "arch": self.arch, "dataset": self.dataset,
            "embed_dim": self.embed_dim, "patch_size": self.patch_size,
            "preprocessing": self.preprocessing.to_dict(),
            "sources": [vars(s).copy() for s in self.sources], "license": self.license, "paper": self.paper,
            "reported": [vars(r).copy() for r in self.reported], "model_args": dict(self.model_args),
            "epochs": self.epochs, "folder": self.folder, "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Build a spec from plain data (a manifest entry); `embed_dim`/`patch_size` default from the arch."""
        try:
            name, method, arch = d["name"], d["method"], d["arch"]
        except KeyError as e:
            raise ZooError(f"a model entry needs 'name', 'method' and 'arch'; {e.args[0]!r} is missing in {d}") from e
        a = arch_spec(arch)
        pre = d.get("preprocessing")
        return cls(
            name=name, method=method, arch=a.name, dataset=d.get("dataset", "unknown"),
            embed_dim=int(d.get("embed_dim") or _arch_dim(a.name)),
            patch_size=d.get("patch_size", _arch_patch(a.name)),
            preprocessing=Preprocessing.from_dict(pre) if pre else _imagenet(),
            sources=tuple(WeightSource(**s) for s in d.get("sources", ())),
            license=d.get("license", "unknown"), paper=d.get("paper", ""),
            reported=tuple(Reported(**r) for r in d.get("reported", ())),
            model_args=dict(d.get("model_args", {})), epochs=d.get("epochs"), folder=d.get("folder"),
            description=d.get("description", ""),
        )


# Widths and patch sizes of our archs, without building a model.
_DIMS = {"resnet18": 512, "resnet50": 2048, "vit_tiny": 192, "vit_small": 384, "vit_base": 768}


def _arch_dim(arch: str) -> int:
    base = arch.removesuffix("_cifar")
    for prefix, dim in _DIMS.items():
        if base == prefix or base.startswith(prefix):
            return dim
    raise ZooError(f"no known feature width for arch {arch!r}; give embed_dim explicitly")


def _arch_patch(arch: str) -> int | None:
    spec = arch_spec(arch)
    if not spec.is_vit:
        return None
    return int(spec.timm_args.get("patch_size") or spec.timm_name.split("patch")[1].split("_")[0])


def _imagenet(interpolation: str = "bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Preprocessing:
    return Preprocessing(input_size=(3, 224, 224), mean=mean, std=std, interpolation=interpolation, crop_pct=0.875)


# --- built-in entries: the authors' released weights ----------------------------------------------------

_BARLOW_RUN = "ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051"  # the run directory the hubconf names
_FAIR = "https://dl.fbaipublicfiles.com"
_DINO = ("https://github.com/facebookresearch/dino", "Caron et al., Emerging Properties in Self-Supervised "
         "Vision Transformers, ICCV 2021, arXiv:2104.14294")
_MOCO = "https://github.com/facebookresearch/moco"
_MOCO_V1_PAPER = "He et al., Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020, arXiv:1911.05722"
_MOCO_V2_PAPER = "Chen et al., Improved Baselines with Momentum Contrastive Learning, arXiv:2003.04297"
_MOCO3 = ("https://github.com/facebookresearch/moco-v3", "Chen, Xie and He, An Empirical Study of Training "
          "Self-Supervised Vision Transformers, ICCV 2021, arXiv:2104.02057")
_IN1K = "imagenet-1k"
_NC = "cc-by-nc-4.0"


def _dino(name: str, arch: str, file: str, knn: float, linear: float) -> ModelSpec:
    return ModelSpec(
        name=name, method="dino", arch=arch, dataset=_IN1K, embed_dim=_arch_dim(arch), patch_size=_arch_patch(arch),
        preprocessing=_imagenet("bicubic"),
        sources=(WeightSource("dino", f"{file}.pth", url=f"{_FAIR}/dino/{file}/{file}.pth", upstream=_DINO[0],
                              note="backbone-only teacher weights, as torch.hub.load('facebookresearch/dino:main') uses"),),
        license="apache-2.0", paper=_DINO[1],
        reported=(Reported("knn_top1", knn, _IN1K, f"{_DINO[0]} README"),
                  Reported("linear_top1", linear, _IN1K, f"{_DINO[0]} README")),
    )


def _moco(name: str, method: str, path: str, linear: float, epochs: int, paper: str) -> ModelSpec:
    return ModelSpec(
        name=name, method=method, arch="resnet50", dataset=_IN1K, embed_dim=2048, preprocessing=_imagenet(),
        sources=(WeightSource("moco", path.rsplit("/", 1)[1], url=f"{_FAIR}/moco/moco_checkpoints/{path}",
                              upstream=_MOCO, note="full training checkpoint; only encoder_q is kept"),),
        license=_NC, paper=paper, epochs=epochs,
        reported=(Reported("linear_top1", linear, _IN1K, f"{_MOCO} README"),),
    )


def _mocov3(name: str, arch: str, tag: str, linear: float, epochs: int, **model_args: Any) -> ModelSpec:
    return ModelSpec(
        name=name, method="mocov3", arch=arch, dataset=_IN1K, embed_dim=_arch_dim(arch), patch_size=_arch_patch(arch),
        preprocessing=_imagenet(), model_args=model_args,
        sources=(WeightSource("mocov3", f"{tag}.pth.tar", url=f"{_FAIR}/moco-v3/{tag}/{tag}.pth.tar",
                              upstream=_MOCO3[0], note="full training checkpoint; only base_encoder is kept"),),
        license=_NC, paper=_MOCO3[1], epochs=epochs,
        reported=(Reported("linear_top1", linear, _IN1K, f"{_MOCO3[0]} README"),),
    )


_SIMCLR = "https://github.com/google-research/simclr"

BUILTIN: tuple[ModelSpec, ...] = (
    _dino("dino_vits16", "vit_small", "dino_deitsmall16_pretrain", 74.5, 77.0),
    _dino("dino_vits8", "vit_small8", "dino_deitsmall8_pretrain", 78.3, 79.7),
    _dino("dino_vitb16", "vit_base", "dino_vitbase16_pretrain", 76.1, 78.2),
    _dino("dino_vitb8", "vit_base8", "dino_vitbase8_pretrain", 77.4, 80.1),
    _dino("dino_resnet50", "resnet50", "dino_resnet50_pretrain", 67.5, 75.3),
    _moco("mocov1_resnet50", "mocov1", "moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar", 60.6, 200, _MOCO_V1_PAPER),
    _moco("mocov2_resnet50", "mocov2", "moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar", 67.7, 200, _MOCO_V2_PAPER),
    _moco("mocov2_resnet50_800ep", "mocov2", "moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", 71.1, 800,
          _MOCO_V2_PAPER),
    _mocov3("mocov3_resnet50", "resnet50", "r-50-1000ep", 74.6, 1000),
    # MoCo v3's ViT-S uses 12 heads (timm's vit_small has 6): same weight shapes, different attention.
    _mocov3("mocov3_vits16", "vit_small", "vit-s-300ep", 73.2, 300, num_heads=12),
    _mocov3("mocov3_vitb16", "vit_base", "vit-b-300ep", 76.7, 300),
    ModelSpec(
        name="swav_resnet50", method="swav", arch="resnet50", dataset=_IN1K, embed_dim=2048, preprocessing=_imagenet(),
        sources=(WeightSource("swav", "swav_800ep_pretrain.pth.tar",
                              url=f"{_FAIR}/deepcluster/swav_800ep_pretrain.pth.tar",
                              upstream="https://github.com/facebookresearch/swav"),),
        license=_NC, epochs=800,
        paper="Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments, "
              "NeurIPS 2020, arXiv:2006.09882",
        reported=(Reported("linear_top1", 75.3, _IN1K, "https://github.com/facebookresearch/swav README"),),
    ),
    ModelSpec(
        name="barlowtwins_resnet50", method="barlowtwins", arch="resnet50", dataset=_IN1K, embed_dim=2048,
        preprocessing=_imagenet(),
        sources=(WeightSource("barlowtwins", "resnet50.pth", url=f"{_FAIR}/barlowtwins/{_BARLOW_RUN}/resnet50.pth",
                              upstream="https://github.com/facebookresearch/barlowtwins",
                              note="backbone-only weights, as the repository's hubconf loads them"),),
        license="mit", epochs=1000,
        paper="Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, ICML 2021, "
              "arXiv:2103.03230",
        reported=(Reported("linear_top1", 73.2, _IN1K, "arXiv:2103.03230, Table 1"),),
    ),
    ModelSpec(
        name="simsiam_resnet50", method="simsiam", arch="resnet50", dataset=_IN1K, embed_dim=2048,
        preprocessing=_imagenet(),
        sources=(WeightSource("simsiam", "checkpoint_0099.pth.tar",
                              url=f"{_FAIR}/simsiam/models/100ep/pretrain/checkpoint_0099.pth.tar",
                              upstream="https://github.com/facebookresearch/simsiam",
                              note="100 epochs, batch 512; full training checkpoint, only the encoder is kept"),),
        license=_NC, epochs=100,
        paper="Chen and He, Exploring Simple Siamese Representation Learning, CVPR 2021, arXiv:2011.10566",
        reported=(Reported("linear_top1", 68.1, _IN1K, "https://github.com/facebookresearch/simsiam README"),),
    ),
    # SimCLR and BYOL were released as TensorFlow / JAX checkpoints only. PyTorch files come from community
    # converters; we name the official artefact and the converter, and take no download URL we cannot vouch for.
    ModelSpec(
        name="simclrv1_resnet50", method="simclr", arch="resnet50", dataset=_IN1K, embed_dim=2048,
        # The converted SimCLR networks take RGB in [0, 1] without mean/std normalisation.
        preprocessing=_imagenet("bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        sources=(WeightSource("simclr", "resnet50-1x.pth", url=None,
                              upstream="https://storage.cloud.google.com/simclr-gcs/checkpoints/ResNet50_1x.zip",
                              note="community conversion of the authors' TensorFlow checkpoint with "
                                   "https://github.com/tonylins/simclr-converter (a {'state_dict': torchvision "
                                   "resnet50 keys} file)"),),
        license="apache-2.0", epochs=1000,
        paper="Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020, "
              "arXiv:2002.05709",
        reported=(Reported("linear_top1", 69.3, _IN1K, "arXiv:2002.05709, Table 6"),),
    ),
    ModelSpec(
        name="simclrv2_resnet50", method="simclrv2", arch="resnet50", dataset=_IN1K, embed_dim=2048,
        preprocessing=_imagenet("bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        sources=(WeightSource("simclr", "r50_1x_sk0.pth", url=None,
                              upstream="gs://simclr-checkpoints/simclrv2/pretrained/r50_1x_sk0",
                              note="community conversion of the authors' TensorFlow checkpoint with "
                                   "https://github.com/Separius/SimCLRv2-Pytorch (a {'resnet', 'head'} file; "
                                   "width 1x without selective kernels only)"),),
        license="apache-2.0", epochs=800,
        paper="Chen et al., Big Self-Supervised Models are Strong Semi-Supervised Learners, NeurIPS 2020, "
              "arXiv:2006.10029",
        reported=(Reported("linear_top1", 71.7, _IN1K, f"{_SIMCLR} README (SimCLRv2, R50 1x SK0)"),),
    ),
    ModelSpec(
        name="byol_resnet50", method="byol", arch="resnet50", dataset=_IN1K, embed_dim=2048,
        preprocessing=_imagenet(),
        sources=(WeightSource("byol", "pretrain_res50x1.pth.tar", url=None,
                              upstream="https://storage.googleapis.com/byol_checkpoints/pretrain_res50x1.pkl",
                              note="community conversion of the authors' JAX/Haiku checkpoint (a pickle, which "
                                   "we refuse to read) to a torchvision-layout ResNet-50 state dict, e.g. "
                                   "https://github.com/ajtejankar/byol-convert"),),
        license="apache-2.0", epochs=1000,
        paper="Grill et al., Bootstrap Your Own Latent, NeurIPS 2020, arXiv:2006.07733",
        reported=(Reported("linear_top1", 74.3, _IN1K, "arXiv:2006.07733, Table 1"),),
    ),
)

_registry: dict[str, ModelSpec] = {}
_home_scanned: Path | None = None


def register(spec: ModelSpec | Callable[[], ModelSpec] | None = None, *, overwrite: bool = False):
    """Add a model to the registry.

    `register(spec)` adds a spec; as a decorator, `@register` on a function returning a `ModelSpec` adds
    what the function returns and gives the function back unchanged.
    """
    if spec is None:
        return lambda fn: register(fn, overwrite=overwrite)
    if callable(spec) and not isinstance(spec, ModelSpec):
        register(spec(), overwrite=overwrite)
        return spec
    if not isinstance(spec, ModelSpec):
        raise ZooError(f"register() takes a ModelSpec, got {type(spec).__name__}")
    arch_spec(spec.arch)  # fail now on an unknown arch, not at load time
    if spec.name in _registry and not overwrite and _registry[spec.name] != spec:
        raise ZooError(f"a model named {spec.name!r} is already registered; pass overwrite=True to replace it")
    _registry[spec.name] = spec
    return spec


def register_manifest(path: str | os.PathLike, overwrite: bool = False) -> list[ModelSpec]:
    """Register every entry of a JSON (`{"models": [...]}` or a list) or TOML (`[[models]]`) manifest."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError as e:
        raise ZooError(f"no manifest at {path}") from e
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"manifest {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {e}") from e
    entries = data.get("models", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ZooError(f"manifest {path}: 'models' must be a list of model entries")
    return [register(ModelSpec.from_dict(e), overwrite=overwrite) for e in entries]


def spec_from_folder(folder: str | os.PathLike, name: str | None = None) -> ModelSpec:
    """A spec describing a local model folder (read from its config.json)."""
    from zoo.folder import read_config

    folder = Path(folder)
    cfg = read_config(folder)
    meta = cfg["zoo"]
    return ModelSpec(
        name=name or meta.get("name") or folder.name, method=meta.get("method", "unknown"), arch=meta["arch"],
        dataset=meta.get("dataset", "unknown"), embed_dim=int(cfg.get("num_features") or _arch_dim(meta["arch"])),
        patch_size=_arch_patch(meta["arch"]), preprocessing=Preprocessing.from_dict(cfg.get("pretrained_cfg", {})),
        sources=(WeightSource("folder", "model.safetensors", upstream=str(folder)),),
        license=meta.get("license", "unknown"), paper=meta.get("paper", ""), epochs=meta.get("epochs"),
        folder=str(folder),
    )


def _scan_home() -> None:
    """Register the manifests and the local model folders under the zoo home (once per home dir)."""
    global _home_scanned
    home = zoo_home()
    if _home_scanned == home:
        return
    _home_scanned = home
    for manifest in (home / "manifest.json", home / "manifest.toml"):
        if manifest.is_file():
            register_manifest(manifest, overwrite=True)
    models = home / "models"
    if models.is_dir():
        from zoo.folder import is_model_folder

        for folder in sorted(p for p in models.iterdir() if is_model_folder(p)):
            try:
                register(spec_from_folder(folder, name=folder.name), overwrite=True)
            except ZooError:
                continue  # a broken folder must not hide the rest; loading it by path reports the problem


def rescan() -> None:
    """Forget what was read from the zoo home so the next lookup reads it again (after adding a folder)."""
    global _home_scanned
    _home_scanned = None


def list_models(pattern: str | None = None) -> list[str]:
    """Names of every registered model, sorted; `pattern` keeps those containing it (e.g. "dino")."""
    _scan_home()
    names = sorted(_registry)
    return [n for n in names if pattern in n] if pattern else names


def spec(name: str) -> ModelSpec:
    """The `ModelSpec` of `name`; an unknown name is an error listing the closest names."""
    _scan_home()
    if name in _registry:
        return _registry[name]
    close = difflib.get_close_matches(name, list(_registry), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (`python -m zoo list` shows every name)")


def specs(names: Iterable[str] | None = None) -> list[ModelSpec]:
    return [spec(n) for n in (names if names is not None else list_models())]


for _s in BUILTIN:
    register(_s)

__all__ = ["BUILTIN", "ModelSpec", "Reported", "WeightSource", "list_models",
           "register", "register_manifest", "rescan", "spec", "spec_from_folder", "zoo_home"]
