"""The model folder: `config.json` (timm-compatible) + `model.safetensors` (encoder weights, timm key names).

It is the one format that moves between training, the zoo, the Hub and the service. Both files are written
atomically; loading checks that the weights fit the architecture the config names and says what differs.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zoo.atomic import atomic_write, write_json_atomic
from zoo.backbones import Encoder, Preprocessing, arch_spec, build_encoder
from zoo.errors import ArchitectureMismatchError, ModelFolderError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
INT8_ONNX_NAME = "model.int8.onnx"  # zoo.onnx.quantize_onnx: CPU serving
CODE_VERSION = "0.1.0"


def is_model_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


def make_config(encoder: Encoder, zoo_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = arch_spec(encoder.arch)
    pre = encoder.preprocessing.to_dict()
    meta = {"arch": encoder.arch, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "code_version": CODE_VERSION}
    meta.update(zoo_meta or {})
    return {
        "architecture": spec.timm_name,
        "num_classes": 0,
        "num_features": encoder.embed_dim,
        "global_pool": getattr(encoder.model, "global_pool", "avg") if isinstance(
            getattr(encoder.model, "global_pool", None), str) else "avg",
        "model_args": _jsonable(encoder.model_args),
        "pretrained_cfg": {**pre, "num_classes": 0},
        "zoo": meta,
    }


def save_encoder(
    encoder: Encoder,
    folder: str | os.PathLike,
    zoo_meta: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `encoder` as a model folder. `dtype=torch.float16` halves the file (for shipping)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous()
             for k, v in encoder.model.state_dict().items()}
    # Weights first, config last: a config always describes weights that are fully on disk.
    atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_json_atomic(folder / CONFIG_NAME, make_config(encoder, zoo_meta))
    return folder


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a model folder: {CONFIG_NAME} is missing")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path} is not valid JSON ({e}); rewrite it or export the model again") from e
    if "zoo" not in cfg or "arch" not in cfg["zoo"]:
        raise ModelFolderError(f"{path} has no zoo.arch entry; it was not written by ssl-zoo")
    return cfg


def update_config(folder: str | os.PathLike, zoo_updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `zoo_updates` into the folder's `config.json["zoo"]` (nested dicts merged one level deep)."""
    cfg = read_config(folder)
    for k, v in zoo_updates.items():
        if isinstance(v, dict) and isinstance(cfg["zoo"].get(k), dict):
            cfg["zoo"][k] = {**cfg["zoo"][k], **v}
        else:
            cfg["zoo"][k] = v
    write_json_atomic(Path(folder) / CONFIG_NAME, cfg)
    return cfg


def load_encoder(
    folder: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    arch: str | None = None,
) -> Encoder:
    """Build the encoder a model folder describes, load its weights, move it, and put it in eval mode.

    `arch`, when given, is the architecture the caller expects; a folder of another one is an error.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    folder_arch = cfg["zoo"]["arch"]
    if arch is not None and arch_spec(arch).name != arch_spec(folder_arch).name:
        raise ArchitectureMismatchError(
            f"{folder} holds a {folder_arch!r} model but {arch!r} was asked for; "
            f"load it as {folder_arch!r} or pick a folder written for {arch!r}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelFolderError(f"{folder} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFolderError(f"{weights} is unreadable or truncated ({e}); write the folder again") from e
    encoder = build_from_config(cfg)
    load_state_checked(encoder, state, source=str(folder), arch=folder_arch)
    encoder.eval()
    if device is not None or dtype is not None:
        encoder.to(device=device, dtype=dtype)
    return encoder


def build_from_config(cfg: dict[str, Any]) -> Encoder:
    """The randomly initialised encoder a folder's config.json describes (arch, arguments, preprocessing)."""
    model_args = dict(cfg.get("model_args", {}))
    if "img_size" in model_args:
        model_args["img_size"] = _as_size(model_args["img_size"])
    return build_encoder(cfg["zoo"]["arch"], preprocessing=Preprocessing.from_dict(cfg.get("pretrained_cfg", {})),
                         **model_args)


def load_state_checked(encoder: Encoder, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load `state` into `encoder.model`, failing with the names of missing, unexpected or mis-shaped keys."""
    own = encoder.model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shapes:
            parts.append("shape mismatch " + _few(
                [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes]))
        guess = guess_arch(state)
        raise ArchitectureMismatchError(
            f"weights in {source} do not fit architecture {arch!r}"
            + (f" (they look like {guess!r})" if guess and guess != arch else "")
            + ": " + "; ".join(parts))
    encoder.model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """A best guess of which of our architectures a state dict was written for (for error messages)."""
    if "cls_token" in state and "patch_embed.proj.weight" in state:
        dim, _, p, _ = state["patch_embed.proj.weight"].shape
        size = {192: "tiny", 384: "small", 768: "base"}.get(int(dim), f"{dim}d")
        return f"vit_{size} (patch {p})"
    if "conv1.weight" in state:
        deep = "layer3.5.conv1.weight" in state
        bottleneck = "layer1.0.conv3.weight" in state
        name = "resnet50" if bottleneck and deep else "resnet18" if not bottleneck else "resnet"
        return name + ("_cifar" if state["conv1.weight"].shape[-1] == 3 else "")
    return None


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _as_size(v: Any) -> Any:
    return int(v[0]) if isinstance(v, list | tuple) else v


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
