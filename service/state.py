"""Everything a request handler needs, created once per app: settings, runtime, batcher, galleries, metrics."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.batcher import Batcher
from service.errors import BadRequest, NotReady
from service.gallery import GalleryStore
from service.images import ImageLimits, decode_image, load_for_model, preprocess
from service.metrics import Metrics
from service.runtime import Runtime, load_runtime
from service.settings import Settings

log = logging.getLogger("service")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
THUMB_SIDE = 128


def thumbnail_jpeg(img: Image.Image) -> bytes:
    img = img.copy()
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.limits = ImageLimits(max_pixels=settings.max_image_pixels, min_side=settings.min_image_side,
                                  formats=tuple(settings.formats))
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.runtime: Runtime | None = None
        self.batcher: Batcher | None = None
        self.store: GalleryStore | None = None
        self.ready = False
        self.failure: str | None = None
        self.started = time.time()
        self._thread: threading.Thread | None = None

    # life cycle ---------------------------------------------------------------------------------------------
    def start_in_background(self) -> None:
        """Load the model, warm it up and build the default gallery without blocking /healthz."""
        self._thread = threading.Thread(target=self._start, name="startup", daemon=True)
        self._thread.start()

    def wait_started(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _start(self) -> None:
        s = self.settings
        try:
            t0 = time.perf_counter()
            rt = load_runtime(s.model_folder(), s.runtime, device=s.device, tensorrt=s.tensorrt,
                              precision=s.precision, cache_dir=s.onnx_cache_dir())
            rt.warm_up()
            self.runtime = rt
            log.info("model %s (%s, dim %d) on runtime %s, provider %s, device %s, %s (%s); loaded in %.1f s",
                     rt.info.name, rt.info.arch, rt.info.dim, rt.kind, rt.provider, rt.device, rt.precision, rt.reason,
                     time.perf_counter() - t0)
            tasks = {"embed": rt.embed}
            if rt.supports_attention:
                tasks["attention"] = rt.attention
            self.batcher = Batcher(tasks, s.max_batch, s.max_wait_ms / 1000, s.max_queue, self.metrics)
            self.store = GalleryStore(s.data_dir, s.index_threshold, s.index_large)
            self.store.ensure_all_indexes()
            if s.default_gallery_dir:
                self.build_default_gallery(Path(s.default_gallery_dir))
            for g in self.store.list():
                self.metrics.gallery_items.labels(g["name"]).set(g["count"])
            self.ready = True
            log.info("ready: http://%s:%d/ (galleries in %s)", s.host, s.port, s.data_dir)
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
            log.exception("start-up failed")

    def close(self) -> None:
        self.wait_started(timeout=60)
        if self.batcher:
            self.batcher.close()
        if self.store:
            self.store.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def require_ready(self) -> Runtime:
        if self.failure:
            raise NotReady(f"the model failed to load: {self.failure}")
        if not self.ready or self.runtime is None:
            raise NotReady("the model is still loading; retry in a few seconds (GET /readyz says when)",
                           headers={"Retry-After": "2"})
        return self.runtime

    # default gallery ----------------------------------------------------------------------------------------
    def build_default_gallery(self, folder: Path) -> None:
        """Embed the shipped sample images once per model; later starts reuse the cached gallery."""
        assert self.runtime is not None and self.store is not None
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            log.warning("no images in %s: no default gallery", folder)
            return
        digest = hashlib.sha256("\n".join(f"{p.relative_to(folder)}:{p.stat().st_size}" for p in files).encode())
        source = {"source_dir": str(folder), "files_sha256": digest.hexdigest()}
        name, info = self.settings.default_gallery, self.runtime.info
        if name in self.store.names():
            g = self.store.get(name)
            if g["model_sha256"] == info.fingerprint and g["meta"].get("files_sha256") == source["files_sha256"]:
                return
            log.info("default gallery %r was made with another model or image set: rebuilding it", name)
            self.store.delete_gallery(name)
        t0 = time.perf_counter()
        for start in range(0, len(files), self.settings.max_batch):
            chunk = files[start:start + self.settings.max_batch]
            arrays, labels, metadata, thumbs = [], [], [], []
            for p in chunk:
                data = p.read_bytes()
                img = decode_image(data, self.limits, str(p))
                arrays.append(preprocess(img, info.preprocessing))
                rel = p.relative_to(folder)
                labels.append(rel.parts[0] if len(rel.parts) > 1 else None)
                metadata.append({"file": rel.as_posix()})
                thumbs.append(data if len(data) < 32_000 else thumbnail_jpeg(img))
            vectors = self.runtime.embed(np.stack(arrays))
            self.store.add(name, vectors, info.fingerprint, info.name, labels, metadata, thumbs, meta=source)
        self.store.save_indexes()
        log.info("built default gallery %r: %d images from %s in %.1f s", name, len(files), folder,
                 time.perf_counter() - t0)

    # helpers for routes ---------------------------------------------------------------------------------------
    async def decode(self, blobs: list[tuple[str, bytes]]) -> list[np.ndarray]:
        """Decode and preprocess uploads in the thread pool (overlapping the model's work)."""
        rt = self.require_ready()
        if len(blobs) > self.settings.max_images_per_request:
            raise BadRequest(f"{len(blobs)} images in one request; the limit is "
                             f"{self.settings.max_images_per_request} (ZOO_MAX_IMAGES_PER_REQUEST)")
        loop = asyncio.get_running_loop()
        pre = rt.info.preprocessing
        jobs = [loop.run_in_executor(self.pool, load_for_model, data, pre, self.limits, name) for name, data in blobs]
        return list(await asyncio.gather(*jobs))

    async def decode_with_thumbnails(self, blobs: list[tuple[str, bytes]]) -> list[tuple[np.ndarray, bytes | None]]:
        rt = self.require_ready()
        loop = asyncio.get_running_loop()
        keep = self.settings.store_thumbnails

        def work(name: str, data: bytes) -> tuple[np.ndarray, bytes | None]:
            img = decode_image(data, self.limits, name, target_side=rt.info.preprocessing.image_size)
            return preprocess(img, rt.info.preprocessing), thumbnail_jpeg(img) if keep else None

        return list(await asyncio.gather(*(loop.run_in_executor(self.pool, work, n, d) for n, d in blobs)))

    async def run(self, task: str, arrays: list[np.ndarray]) -> np.ndarray:
        self.require_ready()
        assert self.batcher is not None
        rows = await self.batcher.run(task, arrays, self.settings.request_timeout_s)
        return np.stack(rows)

    def describe_model(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {"ready": self.ready, "folder": str(s.model_folder())}
        if self.failure:
            out["error"] = self.failure
        rt = self.runtime
        if rt is not None:
            info = rt.info
            out.update({
                "name": info.name, "method": info.method, "arch": info.arch, "dim": info.dim,
                "input_size": list(info.preprocessing.input_size), "mean": list(info.preprocessing.mean),
                "std": list(info.preprocessing.std), "crop_pct": info.preprocessing.crop_pct,
                "attention": rt.supports_attention, "heads": info.num_heads, "patch_size": info.patch_size,
                "runtime": rt.kind, "provider": rt.provider, "device": rt.device, "precision": rt.precision,
                "runtime_reason": rt.reason,
                "weights_sha256": info.fingerprint, **info.extra,
                "batching": {"max_batch": s.max_batch, "max_wait_ms": s.max_wait_ms, "max_queue": s.max_queue},
            })
        return out
