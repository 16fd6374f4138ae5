"""ssl-zoo's public API: get a self-supervised encoder by name, folder or Hub repo.

    import zoo
    zoo.list_models()                              # every registered name
    encoder = zoo.load("dino_vits16")              # the authors' weights (downloaded once, converted, cached)
    encoder = zoo.load("runs/simclr/encoder")      # a model folder
    encoder = zoo.load("hf://ORG/REPO")            # a model folder on the Hugging Face Hub
    features = encoder(images)                     # (B, D)
"""

from __future__ import annotations

import os
from typing import Any

from zoo.backbones import Encoder, Preprocessing, build_encoder, list_archs
from zoo.errors import ZooError
from zoo.folder import is_model_folder, load_encoder, read_config, save_encoder
from zoo.registry import ModelSpec, list_models, register, register_manifest, spec


def convert_layouts() -> list[str]:
    """The upstream checkpoint layouts `zoo.convert` reads."""
    from zoo.convert import list_layouts

    return list_layouts()


__all__ = [
    "Encoder",
    "ModelSpec",
    "Preprocessing",
    "ZooError",
    "build_encoder",
    "convert_layouts",
    "export_onnx",
    "is_model_folder",
    "list_archs",
    "list_models",
    "load",
    "push_to_hub",
    "read_config",
    "register",
    "register_manifest",
    "save_encoder",
    "spec",
]


def load(name_or_path: str | os.PathLike, device: str | None = None, dtype=None) -> Encoder:
    """Return the encoder at `name_or_path`, on `device` (default: cuda if available), in eval mode.

    `name_or_path` is a model folder, a registry name (`zoo.list_models()`), or `hf://ORG/REPO`
    (also `hf-hub:ORG/REPO`). Weights are fetched into the cache on first use (see `zoo.weights`).
    """
    import torch

    from zoo.weights import resolve

    folder = resolve(name_or_path)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_encoder(folder, device=dev, dtype=dtype)


def export_onnx(encoder_or_folder: Any, out_path: str | os.PathLike | None = None, **kwargs: Any) -> dict[str, Any]:
    """Export to ONNX with a parity check; see `zoo.onnx.export_onnx`."""
    from zoo.onnx import export_onnx as _export

    return _export(encoder_or_folder, out_path, **kwargs)


def push_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a model folder (with its model card as README.md) to the Hugging Face Hub; see `zoo.hub`."""
    from zoo.hub import push_to_hub as _push

    return _push(folder, repo_id, token=token, private=private)
