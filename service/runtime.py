"""One `Runtime` interface over two backends: ONNX Runtime (CUDA / TensorRT / CPU provider) and torch.

Both take preprocessed float32 batches `(B, 3, H, W)` and return float32 numpy arrays: `embed` -> `(B, D)`,
`attention` -> `(B, heads, h*w)` (the CLS token's last-block attention over patches, ViTs only).
The ONNX file follows the zoo's export contract: input `images`, outputs `embeddings` and, for ViTs, `attention`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.backbones import Preprocessing, arch_spec
from zoo.errors import ZooError
from zoo.folder import WEIGHTS_NAME, is_model_folder, read_config

log = logging.getLogger("service.runtime")


class RuntimeLoadError(Exception):
    """The model or the requested runtime cannot be loaded; the message says what to do."""


@dataclass
class ModelInfo:
    """What the service says about the model it serves (GET /models), read from the folder's config.json."""

    name: str
    method: str | None
    arch: str
    dim: int
    is_vit: bool
    patch_size: int | None
    preprocessing: Preprocessing
    folder: Path
    fingerprint: str  # sha256 of the weights: galleries remember which model filled them
    num_heads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int] | None:
        if not self.patch_size:
            return None
        _, h, w = self.preprocessing.input_size
        return h // self.patch_size, w // self.patch_size


def read_model_info(folder: Path) -> ModelInfo:
    if not folder.is_dir():
        raise RuntimeLoadError(f"no model folder at {folder}")
    if not is_model_folder(folder):
        raise RuntimeLoadError(f"{folder} is not a model folder: it needs config.json and {WEIGHTS_NAME}")
    try:
        cfg = read_config(folder)
        spec = arch_spec(cfg["zoo"]["arch"])
    except (ZooError, KeyError) as e:
        raise RuntimeLoadError(str(e)) from e
    patch = None
    if spec.is_vit:
        patch = cfg.get("model_args", {}).get("patch_size")
        if patch is None:
            m = re.search(r"patch(\d+)", spec.timm_name)
            patch = int(m.group(1)) if m else None
    return ModelInfo(
        name=str(cfg["zoo"].get("name") or folder.name),
        method=cfg["zoo"].get("method"),
        arch=spec.name,
        dim=int(cfg["num_features"]),
        is_vit=spec.is_vit,
        patch_size=int(patch) if patch else None,
        preprocessing=Preprocessing.from_dict(cfg.get("pretrained_cfg", {})),
        folder=folder,
        fingerprint=_sha256(folder / WEIGHTS_NAME),
        extra={k: cfg["zoo"][k] for k in ("dataset", "eval") if k in cfg["zoo"]},
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Runtime(ABC):
    kind: str
    device: str
    provider: str
    precision: str = "fp32"
    reason: str = ""  # why this runtime was chosen (shown in GET /models)

    def __init__(self, info: ModelInfo):
        self.info = info

    @property
    @abstractmethod
    def supports_attention(self) -> bool: ...

    @abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def attention(self, batch: np.ndarray) -> np.ndarray: ...

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run once per batch size so the first requests do not pay for lazy initialisation."""
        shape = self.info.preprocessing.input_size
        for b in batch_sizes:
            self.embed(np.zeros((b, *shape), np.float32))
        if self.supports_attention:
            a = self.attention(np.zeros((1, *shape), np.float32))
            self.info.num_heads = int(a.shape[1])


class TorchRuntime(Runtime):
    kind = "torch"

    def __init__(self, info: ModelInfo, device: str | None = None):
        import torch

        import zoo

        super().__init__(info)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.provider = "torch-" + self.device
        self.precision = "fp16" if self.device.startswith("cuda") else "fp32"  # autocast on CUDA
        self.encoder = zoo.load(str(info.folder), device=self.device)
        self._torch = torch

    @property
    def supports_attention(self) -> bool:
        return self.encoder.is_vit

    def _run(self, fn, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self.device.startswith("cuda")):
            return fn(x).float().cpu().numpy()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.encoder, batch)

    def attention(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.encoder.cls_attention, batch)


class OnnxRuntime(Runtime):
    kind = "onnx"

    def __init__(self, info: ModelInfo, path: Path, tensorrt: bool = False, cpu_only: bool = False):
        import onnxruntime as ort

        super().__init__(info)
        available = [] if cpu_only else ort.get_available_providers()
        wanted: list[Any] = []
        if tensorrt and "TensorrtExecutionProvider" in available:
            cache = str(path.parent / ".trt_cache")
            wanted.append(("TensorrtExecutionProvider",
                           {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache}))
        if "CUDAExecutionProvider" in available:
            wanted.append("CUDAExecutionProvider")
        wanted.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads spin-wait by default, taking the cores the event loop and the image decoders
        # need between batches; a server shares its CPU, so they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise RuntimeLoadError(f"ONNX Runtime could not load {path}: {e}") from e
        # onnxruntime-gpu without a usable GPU silently keeps only the CPU provider: report what is active.
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name for o in self.session.get_outputs()}
        if "images" not in inputs or "embeddings" not in self.outputs:
            raise RuntimeLoadError(
                f"{path} does not follow the export contract (input 'images', output 'embeddings'); it has inputs "
                f"{sorted(inputs)} and outputs {sorted(self.outputs)}. Export it again with `python -m zoo export`")
        shape = inputs["images"].shape
        want = info.preprocessing.input_size
        if all(isinstance(s, int) for s in shape[1:]) and tuple(shape[1:]) != tuple(want):
            raise RuntimeLoadError(f"{path} takes images of shape {shape[1:]} but config.json says {list(want)}")
        self.input_dtype = np.float16 if inputs["images"].type == "tensor(float16)" else np.float32
        half = self.input_dtype == np.float16 or self.provider == "TensorrtExecutionProvider"  # trt_fp16_enable
        self.precision = "int8" if cpu_only else "fp16" if half else "fp32"

    @property
    def supports_attention(self) -> bool:
        return "attention" in self.outputs

    def _run(self, output: str, batch: np.ndarray) -> np.ndarray:
        feeds = {"images": np.ascontiguousarray(batch, dtype=self.input_dtype)}
        return self.session.run([output], feeds)[0].astype(np.float32, copy=False)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._run("embeddings", batch)

    def attention(self, batch: np.ndarray) -> np.ndarray:
        return self._run("attention", batch)


def _onnxruntime_missing() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install 'ssl-zoo[cpu]' or 'ssl-zoo[gpu]')"
    return None


def cuda_provider_usable() -> bool:
    import onnxruntime as ort
    import torch

    # onnxruntime-gpu lists its CUDA provider even on a machine without a GPU (and then runs on CPU).
    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


def load_runtime(folder: Path, choice: str = "auto", device: str | None = None, tensorrt: bool = False,
                 precision: str = "auto", cache_dir: Path | None = None) -> Runtime:
    """The runtime `choice` asks for; `auto` prefers ONNX Runtime and falls back to torch, saying why.

    ONNX graphs missing from the folder are derived into `cache_dir` (service.onnx_cache). `precision`:
    `auto` serves the int8 graph on CPU when it passes the parity check and fp32 otherwise (on a GPU, the fp32
    graph, fp16 with TensorRT); `fp32` and `int8` insist (int8 runs on ONNX Runtime's CPU provider).
    """
    from service.onnx_cache import GraphUnavailable, fp32_graph, int8_graph

    info = read_model_info(folder)
    if precision not in ("auto", "fp32", "int8"):
        raise RuntimeLoadError(f"precision must be auto, fp32 or int8, not {precision!r}")
    if choice == "torch":
        if precision == "int8":
            raise RuntimeLoadError("--precision int8 needs ONNX Runtime; it cannot be combined with --runtime torch")
        rt: Runtime = TorchRuntime(info, device)
        rt.reason = "asked for (--runtime torch)"
        return rt
    problem = _onnxruntime_missing()
    if problem is None:
        try:
            path, reason = fp32_graph(folder, info.fingerprint, cache_dir)
            cpu_only = False
            if precision == "int8" or (precision == "auto" and not cuda_provider_usable()):
                try:
                    path, int8_reason = int8_graph(folder, path, _sha256(path), cache_dir)
                    reason, cpu_only = f"{reason}; {int8_reason}", True
                except GraphUnavailable as e:
                    if precision == "int8":
                        raise RuntimeLoadError(f"--precision int8 is not possible: {e}") from e
                    log.info("serving fp32: no int8 graph (%s)", e)
                    reason += f"; fp32 because int8 was refused: {e}"
            rt = OnnxRuntime(info, path, tensorrt=tensorrt and not cpu_only, cpu_only=cpu_only)
            if info.is_vit and not rt.supports_attention and choice == "auto":
                problem = f"{path.name} has no 'attention' output, which a ViT needs for /attention"
            else:
                rt.reason = ("asked for (--runtime onnx); " if choice == "onnx" else "") + reason
                return rt
        except GraphUnavailable as e:
            problem = str(e)
        except RuntimeLoadError as e:
            if precision == "int8":
                raise
            problem = str(e)
    if choice == "onnx" or precision == "int8":
        asked = "--runtime onnx" if choice == "onnx" else "--precision int8"
        raise RuntimeLoadError(f"{asked} is not possible: {problem}")
    log.warning("runtime: falling back to torch because %s", problem)
    rt = TorchRuntime(info, device)
    rt.reason = f"fallback to torch: {problem}"
    return rt
