"""Helpers for the service tests: model folders from random weights, test images, a real uvicorn server."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ZOO_DATA_DIR") or ROOT.parent / "shared" / "data")


def make_model_folder(arch: str, folder: Path, seed: int = 0, name: str | None = None, **build_args) -> Path:
    import zoo

    torch.manual_seed(seed)
    encoder = zoo.build_encoder(arch, **build_args)
    zoo.save_encoder(encoder, folder, zoo_meta={"name": name or f"random_{arch}", "method": "random"})
    return folder


def jpeg_bytes(img: Image.Image, quality: int = 90, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def cifar_sample(split: str, n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """`n` CIFAR-10 images (uint8 NHWC), labels and class names, or None without ../shared/data."""
    path = SHARED_DATA / "cifar10" / ("train_0.npz" if split == "train" else "test.npz")
    if not path.is_file():
        return None
    z = np.load(path)
    return z["images"][offset:offset + n], z["labels"][offset:offset + n], [str(c) for c in z["classes"]]


def synthetic_images(n: int, size: int = 48, seed: int = 0) -> list[Image.Image]:
    """Colourful images with shapes (for when CIFAR-10 is absent)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, 3)
        arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        arr[y:y + size // 3, x:x + size // 3] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(arr))
    return out


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as s:
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(url + "/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
            if r.json().get("status") == "failed":
                raise RuntimeError(f"server failed to start: {last}")
        except httpx.TransportError as e:
            last = repr(e)
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready after {timeout} s: {last}")


class ThreadServer:
    """The real app under a real uvicorn, on 127.0.0.1 and a free port, in a thread of the test process."""

    def __init__(self, settings):
        import uvicorn

        from service.app import create_app

        self.app = create_app(settings)
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def start_subprocess_server(args: list[str], env_extra: dict[str, str] | None = None,
                            log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), *args],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
    except Exception:
        proc.kill()
        raise
    return proc, url
