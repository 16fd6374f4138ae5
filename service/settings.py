"""Service settings: CLI flags and `ZOO_` environment variables, read once by pydantic-settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = PACKAGE_DIR / "default" / "model"
DEFAULT_GALLERY_DIR = PACKAGE_DIR / "default" / "gallery"


def default_data_dir() -> Path:
    """Where galleries and their indexes live: `$ZOO_HOME/service`, else `~/.cache/ssl-zoo/service`."""
    home = os.environ.get("ZOO_HOME")
    return Path(home) / "service" if home else Path.home() / ".cache" / "ssl-zoo" / "service"


class Settings(BaseSettings):
    """Every knob of the service. Flags of `python -m service` override `ZOO_*` variables."""

    model_config = SettingsConfigDict(env_prefix="ZOO_", extra="ignore", protected_namespaces=())

    model: str | None = Field(None, description="model folder (default: the bundled service/default/model)")
    runtime: Literal["auto", "onnx", "torch"] = "auto"
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="ONNX graph: auto is int8 on CPU when it passes the parity check, else fp32")
    device: str | None = Field(None, description="torch device; default cuda when available, else cpu")
    tensorrt: bool = Field(False, description="try ONNX Runtime's TensorRT provider before CUDA")
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(default_factory=default_data_dir, description="galleries (SQLite + FAISS) live here")

    # Batching (Triton/infinity style): one forward pass for many requests.
    max_batch: int = Field(64, ge=1, le=4096)
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(1024, ge=1, description="images waiting for the model; beyond it: 429")
    request_timeout_s: float = Field(30.0, gt=0)
    decode_threads: int = Field(2, ge=1)

    # Input limits.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1, description="larger images are refused (decompression bombs)")
    min_image_side: int = Field(8, ge=1, description="smaller images carry nothing to embed")
    max_images_per_request: int = Field(256, ge=1)
    max_k: int = Field(1000, ge=1)
    formats: list[str] = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]

    default_model_dir: Path = Field(DEFAULT_MODEL_DIR, description="the model served when no --model is given")

    # Galleries.
    default_gallery: str = "default"
    default_gallery_dir: Path | None = Field(
        DEFAULT_GALLERY_DIR, description="images embedded into the default gallery at first start; empty: none")
    index_threshold: int = Field(100_000, ge=1, description="from this many items on, an approximate index")
    index_large: Literal["hnsw", "ivfpq"] = "hnsw"
    store_thumbnails: bool = True
    index_save_every_s: float = Field(10.0, gt=0, description="how often a changed FAISS index is written")

    # Access.
    api_key: str | None = Field(None, description="when set, gallery writes and deletes need it")
    cors_origins: list[str] = []
    log_level: str = "info"

    def onnx_cache_dir(self) -> Path:
        """ONNX exports and int8 copies made at start for folders that lack them (service.onnx_cache)."""
        return self.data_dir / "onnx"

    def model_folder(self) -> Path:
        """The folder to serve: `model` as a path, else as a zoo name or hf:// reference (fetched into the cache)."""
        if not self.model:
            return self.default_model_dir
        if Path(self.model).is_dir():
            return Path(self.model)
        from zoo.weights import resolve

        return Path(resolve(self.model))
