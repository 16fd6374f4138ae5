"""ssl-zoo's public API: get a self-supervised encoder by name or folder.

    import zoo
    encoder = zoo.load("runs/simclr/encoder")      # a model folder
    features = encoder(images)                     # (B, D)
"""

from zoo.backbones import Encoder, Preprocessing, build_encoder, list_archs
from zoo.errors import ZooError
from zoo.folder import is_model_folder, load_encoder, read_config, save_encoder

__all__ = [
    "Encoder",
    "Preprocessing",
    "ZooError",
    "build_encoder",
    "is_model_folder",
    "list_archs",
    "load",
    "read_config",
    "save_encoder",
]


def load(name_or_path: str, device: str | None = None, dtype=None) -> Encoder:
    """Return the encoder at `name_or_path` (a model folder), on `device`, in eval mode."""
    import os

    import torch

    if not os.path.isdir(name_or_path):
        raise ZooError(f"no model folder at {name_or_path!r}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_encoder(name_or_path, device=dev, dtype=dtype)
