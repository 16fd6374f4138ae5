"""The ONNX graphs the service runs, derived from a model folder once and cached.

- fp32: the folder's own `model.onnx` when it is there and newer than the weights; otherwise an export made
  at start (`zoo.onnx.export_onnx`, parity-checked) into the cache, so a folder of weights alone, the bundled
  default model included, still runs on ONNX Runtime.
- int8 (CPU): the folder's own `model.int8.onnx` when fresh; otherwise `zoo.onnx.quantize_onnx` of the fp32
  graph into the cache. Quantization is kept only when it passes the fp32 contract's parity check; a refusal
  is cached too, so a model that quantizes badly does not pay for the attempt at every start.

Cache entries are keyed by the sha256 of what they are derived from (the weights for an export, the fp32
graph for an int8 copy) and by `GRAPH_VERSION`, so they can never be stale: new weights or a new graph
layout make a new entry. Files are written atomically; several servers may share a cache.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from zoo.atomic import write_json_atomic
from zoo.errors import ZooError
from zoo.folder import INT8_ONNX_NAME, ONNX_NAME, WEIGHTS_NAME, read_config

log = logging.getLogger("service.onnx_cache")

# Bump when zoo.onnx changes the exported graph (v2: the last ViT block runs for the CLS token only).
GRAPH_VERSION = 2
REFUSED_NAME = "int8_refused.json"


class GraphUnavailable(Exception):
    """No graph of the asked precision can be had; the message says why."""


def _fresh(path: Path, source: Path) -> bool:
    return path.is_file() and path.stat().st_mtime >= source.stat().st_mtime


def fp32_graph(folder: Path, fingerprint: str, cache_dir: Path | None) -> tuple[Path, str]:
    """The fp32 graph to serve and how it was found; raises GraphUnavailable when it cannot be made."""
    own = folder / ONNX_NAME
    if _fresh(own, folder / WEIGHTS_NAME):
        return own, f"{ONNX_NAME} present"
    missing = f"{ONNX_NAME} is older than {WEIGHTS_NAME}" if own.is_file() else f"the folder has no {ONNX_NAME}"
    if cache_dir is None:
        raise GraphUnavailable(f"{missing} (make one with `python -m zoo export {folder}`)")
    entry = cache_dir / f"{fingerprint[:16]}-v{GRAPH_VERSION}"
    cached = entry / ONNX_NAME
    if cached.is_file():
        return cached, f"{missing}; using the export cached in {entry}"
    from zoo.onnx import export_onnx

    t0 = time.perf_counter()
    try:
        report = export_onnx(str(folder), cached)
    except (ZooError, ImportError) as e:
        raise GraphUnavailable(f"{missing}, and exporting one failed: {e}") from e
    write_json_atomic(entry / "export.json", {k: v for k, v in report.items() if k != "path"})
    log.info("exported %s to %s in %.1f s (parity checked)", folder, cached, time.perf_counter() - t0)
    return cached, f"{missing}; exported at start into {entry}"


def int8_graph(folder: Path, fp32: Path, fp32_sha256: str, cache_dir: Path | None) -> tuple[Path, str]:
    """The int8 graph for CPU serving; raises GraphUnavailable when quantization is not possible or refused."""
    own = folder / INT8_ONNX_NAME
    if fp32 == folder / ONNX_NAME and _fresh(own, fp32) and "onnx_int8" in read_config(folder)["zoo"]:
        return own, f"{INT8_ONNX_NAME} present"
    if cache_dir is None:
        raise GraphUnavailable(f"the folder has no fresh {INT8_ONNX_NAME} (`python -m zoo export --int8`)")
    entry = cache_dir / f"int8-{fp32_sha256[:16]}-v{GRAPH_VERSION}"
    cached, refused = entry / INT8_ONNX_NAME, entry / REFUSED_NAME
    if cached.is_file():
        return cached, f"int8 copy cached in {entry}"
    if refused.is_file():
        raise GraphUnavailable(json.loads(refused.read_text())["reason"] + f" (decided earlier; see {refused})")
    from zoo.onnx import OnnxExportError, quantize_onnx

    t0 = time.perf_counter()
    try:
        report = quantize_onnx(str(folder), fp32, cached)
    except OnnxExportError as e:
        write_json_atomic(refused, {"reason": str(e), "source": str(fp32)})
        raise GraphUnavailable(str(e)) from e
    write_json_atomic(entry / "quantize.json", {k: v for k, v in report.items() if k != "path"})
    log.info("quantized %s to int8 in %.1f s (parity checked)", fp32, time.perf_counter() - t0)
    return cached, f"int8 copy made at start into {entry}"

