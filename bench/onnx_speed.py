"""PyTorch eager vs ONNX Runtime (CPU) throughput of our encoders, at batch 1 and 32.

    python bench/onnx_speed.py                       # the four acceptance models, ~2 s per cell
    python bench/onnx_speed.py --archs resnet50 --seconds 5 --out bench/results/onnx_speed.json

Each model is exported with `zoo.onnx.export_onnx` (parity checked), then timed with random weights (speed
does not depend on their values): warm-up run, then repeated runs until `--seconds` have passed (at least
one). Prints a table and writes JSON, with the thread count and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.atomic import write_json_atomic  # noqa: E402
from zoo.backbones import build_encoder  # noqa: E402
from zoo.onnx import IMAGES, export_onnx  # noqa: E402

ARCHS = ["resnet18_cifar", "resnet50", "vit_small", "vit_tiny_p4"]


def images_per_second(run, batch: int, seconds: float) -> float:
    run()  # warm-up (allocations, ORT's first-run optimisations)
    n, start = 0, time.perf_counter()
    while True:
        run()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * batch / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--batches", default="1,32")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell (after one warm-up run)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "onnx_speed.json"))
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.log_severity_level = 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            enc = build_encoder(arch).eval()
            path = Path(tmp) / f"{arch}.onnx"
            report = export_onnx(enc, path)
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            size = enc.preprocessing.image_size
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.randn(batch, 3, size, size)
                xn = x.numpy()

                def eager(x=x, enc=enc):
                    with torch.inference_mode():
                        enc(x)

                def onnx(xn=xn, session=session):
                    session.run(None, {IMAGES: xn})

                torch_ips = images_per_second(eager, batch, args.seconds)
                ort_ips = images_per_second(onnx, batch, args.seconds)
                row = {"arch": arch, "image_size": size, "batch": batch, "torch_eager_ips": round(torch_ips, 2),
                       "onnxruntime_ips": round(ort_ips, 2), "speedup": round(ort_ips / torch_ips, 2),
                       "parity_real_min_cosine": report["parity"]["real"]["embedding_min_cosine"]}
                rows.append(row)
                print(f"{arch:15s} {size:4d}px  batch {batch:3d}  torch {torch_ips:8.1f} img/s  "
                      f"onnxruntime {ort_ips:8.1f} img/s  x{row['speedup']:.2f}", flush=True)
    result = {"rows": rows, "threads": args.threads, "seconds_per_cell": args.seconds,
              "torch": torch.__version__, "onnxruntime": ort.__version__, "machine": platform.machine(),
              "processor": platform.processor() or platform.platform(), "load_average_at_end": os.getloadavg(),
              "note": "torch eager: embeddings only; ONNX Runtime: the exported graph (ViTs also output the "
                      "last block's CLS attention, computed in the same pass)"}
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
