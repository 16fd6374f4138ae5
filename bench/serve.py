"""Serving benchmark: /embed throughput and latency with C concurrent clients, against the raw runtime and a
naive server (one torch forward per request, no batching).

    python bench/serve.py --clients 1 8 32 --duration 10          # the bundled default model
    python bench/serve.py --model FOLDER --precision fp32 ...
    python bench/serve.py --arch vit_tiny_p8 ...                   # random weights of an architecture

Prints a table and writes bench/results/serve.json. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
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

from zoo.atomic import write_json_atomic  # noqa: E402


def make_folder(arch: str, out: Path) -> Path:
    """A random-weight model folder with an ONNX export."""
    import torch

    import zoo
    from zoo.onnx import export_onnx

    torch.manual_seed(0)
    folder = zoo.save_encoder(zoo.build_encoder(arch), out, zoo_meta={"name": f"random_{arch}"})
    export_onnx(str(folder))
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
    return {"latencies": latencies, "seconds": took, "errors": errors, "images_batched": s1 - s0,
            "batches": c1 - c0}


def pooled(parts: list[dict]) -> dict:
    """One measurement from several rounds: total images over total time, latency percentiles over all."""
    lat = np.concatenate([np.asarray(p["latencies"]) for p in parts]) * 1000
    seconds = sum(p["seconds"] for p in parts)
    return {"images_per_s": len(lat) / seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": len(lat), "seconds": seconds,
            "errors": sum(p["errors"] for p in parts),
            "mean_batch": sum(p["images_batched"] for p in parts) / max(sum(p["batches"] for p in parts), 1)}


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
    p.add_argument("--model", help="model folder (default: the bundled default model, unless --arch is given)")
    p.add_argument("--arch", help="serve random weights of this architecture, exported to ONNX")
    p.add_argument("--runtime", default="auto", choices=["auto", "onnx", "torch"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating served / naive / raw rounds per row")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = p.parse_args()

    from service.runtime import load_runtime
    from service.settings import DEFAULT_MODEL_DIR

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    if args.arch:
        folder = make_folder(args.arch, tmp / "model")
    else:
        folder = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    # The raw runtime and the server share one ONNX cache, so both run the very same graph.
    runtime = load_runtime(folder, args.runtime, precision=args.precision, cache_dir=tmp / "data" / "onnx")
    runtime.warm_up()
    image = query_image(runtime.info.preprocessing.image_size)
    served_proc, url = start_server(folder, tmp / "data", ["--runtime", args.runtime, "--precision", args.precision])
    naive_proc, naive_url = start_server(folder, tmp / "naive",
                                         ["--runtime", "torch", "--max-batch", "1", "--max-wait-ms", "0"])
    rows = []
    try:
        served_model = httpx.get(url + "/models").json()["models"][0]
        # This machine's speed drifts by tens of percent over minutes (shared CPUs), so the served, naive and
        # raw figures of a row are taken in alternating rounds rather than one after the other.
        step = args.duration / args.rounds
        for c in args.clients:
            served, naive, raw = [], [], []
            for _ in range(args.rounds):
                served.append(asyncio.run(drive(url, image, c, step)))
                naive.append(asyncio.run(drive(naive_url, image, c, step)))
                batch = max(1, round(pooled(served)["mean_batch"]))
                raw.append(raw_rate(runtime, batch, step / 2))
            row = {"clients": c, **pooled(served)}
            naive_row = pooled(naive)
            row.update(raw_batch=batch, raw_images_per_s=float(np.mean(raw)),
                       naive_images_per_s=naive_row["images_per_s"], naive_p50_ms=naive_row["p50_ms"],
                       naive_p99_ms=naive_row["p99_ms"])
            rows.append(row)
    finally:
        for proc in (served_proc, naive_proc):
            proc.terminate()
            proc.wait()

    header = (f"{'C':>3} {'served img/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'raw img/s':>10} "
              f"{'served/raw':>10} {'naive img/s':>12} {'served/naive':>12}")
    print(f"model {served_model['name']} ({served_model['arch']}): {served_model['runtime']} "
          f"{served_model['precision']} on {served_model['provider']} ({served_model['runtime_reason']}); naive: "
          f"torch fp32, batch 1; {args.duration:g} s per point, {os.cpu_count()} CPUs")
    print(header)
    for r in rows:
        r["served_over_raw"] = r["images_per_s"] / r["raw_images_per_s"]
        r["served_over_naive"] = r["images_per_s"] / r["naive_images_per_s"]
        print(f"{r['clients']:>3} {r['images_per_s']:>13.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['mean_batch']:>6.1f} {r['raw_images_per_s']:>10.1f} {r['served_over_raw']:>10.2f} "
              f"{r['naive_images_per_s']:>12.1f} {r['served_over_naive']:>12.2f}")
    out = {"model": str(folder), "name": served_model["name"], "arch": served_model["arch"],
           "runtime": served_model["runtime"], "precision": served_model["precision"],
           "runtime_reason": served_model["runtime_reason"], "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
           "duration_s": args.duration, "rounds": args.rounds,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "load_average": os.getloadavg(), "rows": rows}
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
