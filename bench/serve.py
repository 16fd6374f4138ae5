"""Serving benchmark: /embed throughput and latency with C concurrent clients, against the raw runtime and a
naive server (one torch forward per request, no batching).

    python bench/serve.py --arch vit_tiny_p8 --clients 1 8 32 --duration 10
    python bench/serve.py --model FOLDER ...

Prints a table and writes bench/results/serve.json. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_folder(arch: str, out: Path) -> Path:
    """A random-weight model folder with an ONNX export (zoo.onnx when present, else the tests' exporter)."""
    import torch

    import zoo

    torch.manual_seed(0)
    folder = zoo.save_encoder(zoo.build_encoder(arch), out, zoo_meta={"name": f"random_{arch}"})
    try:
        from zoo.onnx import export_onnx

        export_onnx(str(folder), str(folder / "model.onnx"))
    except ImportError:
        sys.path.insert(0, str(ROOT / "tests"))
        from service_testing import export_onnx_for_test

        export_onnx_for_test(folder)
    return folder


def query_image(size: int) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def start_server(folder: Path, data: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--model", str(folder), "--data-dir", str(data),
                             "--port", str(port), "--no-default-gallery", "--log-level", "warning", *extra],
                            cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    get = lambda key: float(next((ln.split()[-1] for ln in text.splitlines() if ln.startswith(key)), 0))  # noqa: E731
    return get('zoo_batch_size_sum{task="embed"}'), get('zoo_batch_size_count{task="embed"}')


def multipart_request(host: str, path: str, image: bytes) -> bytes:
    """One complete HTTP/1.1 POST of `image` as multipart field `files`, built once and sent many times."""
    boundary = "zoobenchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"q.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request on a kept-alive connection and read its whole response; returns the status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def drive(url: str, image: bytes, clients: int, duration: float) -> dict:
    """C clients, each on its own kept-alive connection, sending the next request when the last is answered.

    The load generator shares the machine's CPUs with the server, so it is kept lean: raw asyncio streams
    and a request built once, about 0.1 ms of CPU per request against the 2-5 ms an HTTP client library
    spends (which would be measured as the server's slowness)."""
    host, port = url.removeprefix("http://").split(":")
    request = multipart_request(f"{host}:{port}", "/embed", image)
    latencies: list[float] = []
    errors = 0
    warmed = asyncio.Barrier(clients + 1)  # every connection open and used once before the clock starts
    ready = asyncio.Event()
    stop = 0.0  # set when the clock starts

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await _exchange(reader, writer, request)
            await warmed.wait()
            await ready.wait()
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                if await _exchange(reader, writer, request) == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await warmed.wait()
    s0, c0 = batch_stats(url)
    stop = time.perf_counter() + duration
    start = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    took = time.perf_counter() - start
    s1, c1 = batch_stats(url)
    lat = np.asarray(latencies) * 1000
    return {"clients": clients, "images_per_s": len(lat) / took, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": len(lat), "errors": errors,
            "mean_batch": (s1 - s0) / max(c1 - c0, 1)}


def raw_rate(runtime, batch: int, duration: float) -> float:
    x = np.random.default_rng(0).normal(size=(batch, *runtime.info.preprocessing.input_size)).astype(np.float32)
    runtime.embed(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        runtime.embed(x)
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: random weights of --arch, exported to ONNX)")
    p.add_argument("--arch", default="vit_tiny_p8")
    p.add_argument("--runtime", default="auto", choices=["auto", "onnx", "torch"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = p.parse_args()

    from service.runtime import load_runtime

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    folder = Path(args.model) if args.model else make_folder(args.arch, tmp / "model")
    runtime = load_runtime(folder, args.runtime)
    runtime.warm_up()
    image = query_image(runtime.info.preprocessing.image_size)
    rows = []
    proc, url = start_server(folder, tmp / "data", ["--runtime", args.runtime])
    try:
        for c in args.clients:
            rows.append({"mode": "served", **asyncio.run(drive(url, image, c, args.duration))})
    finally:
        proc.terminate()
        proc.wait()
    for row in rows:
        row["raw_batch"] = max(1, round(row["mean_batch"]))
        row["raw_images_per_s"] = raw_rate(runtime, row["raw_batch"], args.duration / 2)
    del runtime
    proc, url = start_server(folder, tmp / "naive", ["--runtime", "torch", "--max-batch", "1", "--max-wait-ms", "0"])
    try:
        for row in rows:
            naive = asyncio.run(drive(url, image, row["clients"], args.duration))
            row["naive_images_per_s"], row["naive_p50_ms"], row["naive_p99_ms"] = (
                naive["images_per_s"], naive["p50_ms"], naive["p99_ms"])
    finally:
        proc.terminate()
        proc.wait()

    header = (f"{'C':>3} {'served img/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'raw img/s':>10} "
              f"{'served/raw':>10} {'naive img/s':>12} {'served/naive':>12}")
    print(f"model {folder.name} ({args.arch if not args.model else ''}), runtime {args.runtime}, "
          f"{args.duration:g} s per point, {os.cpu_count()} CPUs")
    print(header)
    for r in rows:
        r["served_over_raw"] = r["images_per_s"] / r["raw_images_per_s"]
        r["served_over_naive"] = r["images_per_s"] / r["naive_images_per_s"]
        print(f"{r['clients']:>3} {r['images_per_s']:>13.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['mean_batch']:>6.1f} {r['raw_images_per_s']:>10.1f} {r['served_over_raw']:>10.2f} "
              f"{r['naive_images_per_s']:>12.1f} {r['served_over_naive']:>12.2f}")
    out = {"model": str(folder), "arch": args.arch, "runtime": args.runtime, "duration_s": args.duration,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "load_average": os.getloadavg(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
