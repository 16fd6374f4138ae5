"""`python -m service [--model FOLDER] ...` serves a model; `python -m service gallery build|list` manages galleries."""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from service.settings import PACKAGE_DIR, Settings

log = logging.getLogger("service")

# flag -> Settings field; only flags given on the command line override ZOO_* variables
_SERVE_FLAGS = {
    "model": str, "runtime": str, "precision": str, "device": str, "host": str, "port": int, "data_dir": str, "max_batch": int,
    "max_wait_ms": float, "max_queue": int, "request_timeout_s": float, "decode_threads": int,
    "max_body_bytes": int, "api_key": str, "log_level": str, "index_threshold": int, "index_large": str,
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder (config.json + model.safetensors [+ model.onnx]); "
                                   "default: the bundled service/default/model")
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"],
                   help="auto: ONNX Runtime (exporting the folder to ONNX once when it has no model.onnx), "
                        "torch when that is not possible")
    p.add_argument("--precision", choices=["auto", "fp32", "int8"],
                   help="ONNX Runtime graph; auto: int8 on CPU when it passes the parity check, else fp32")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--data-dir", help="where galleries (SQLite + FAISS) are kept (default $ZOO_HOME/service)")
    p.add_argument("--max-batch", type=int, help="images per forward pass at most (default 64)")
    p.add_argument("--log-level", help="debug, info, warning")


def _settings(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in _SERVE_FLAGS and v is not None}
    if getattr(args, "cors", None):
        given["cors_origins"] = args.cors
    if getattr(args, "no_default_gallery", False):
        given["default_gallery_dir"] = None
    return Settings(**given)


def _check_model(settings: Settings) -> None:
    from zoo.errors import ZooError

    try:
        folder = settings.model_folder()
    except ZooError as e:
        sys.exit(f"error: {e}")
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return
    if settings.model is None:
        sys.exit(f"error: no --model given, and the bundled default model is missing: {folder} needs "
                 "config.json and model.safetensors.\nServe a model folder with `python -m service --model "
                 "FOLDER`, or put the default model there (README.md, section Serve).")
    sys.exit(f"error: {folder} is not a model folder: it needs config.json and model.safetensors "
             "(write one with zoo.save_encoder or `python -m training fit`)")


def serve(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    _add_common(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 in Docker)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill (default 5)")
    p.add_argument("--max-queue", type=int, help="queued images before answering 429 (default 1024)")
    p.add_argument("--request-timeout-s", type=float, help="per-request timeout (default 30)")
    p.add_argument("--decode-threads", type=int, help="image decoding threads (default 2)")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 32 MiB)")
    p.add_argument("--index-threshold", type=int, help="gallery size from which an approximate index is used")
    p.add_argument("--index-large", choices=["hnsw", "ivfpq"], help="the approximate index (default hnsw)")
    p.add_argument("--api-key", help="required for gallery writes and deletes (or ZOO_API_KEY)")
    p.add_argument("--cors", nargs="*", help="allowed CORS origins")
    p.add_argument("--no-default-gallery", action="store_true", help="do not build the default gallery")
    args = p.parse_args(argv)
    settings = _settings(args)
    _check_model(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=10)


def _dataset_root(given: str | None) -> Path:
    for candidate in (given, os.environ.get("ZOO_DATA_DIR"), PACKAGE_DIR.parent.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    sys.exit("error: no data set folder: pass --dataset-dir, or set ZOO_DATA_DIR (the folder holding "
             "cifar10/ and imagenette/)")


def _from_data(name: str, split: str, root: Path, limit: int | None) -> Iterator[tuple[bytes | object, str, dict]]:
    import numpy as np
    from PIL import Image

    if name == "cifar10":
        files = [root / "cifar10" / f for f in (["train_0.npz", "train_1.npz"] if split == "train" else ["test.npz"])]
        count = 0
        for f in files:
            z = np.load(f)
            classes = [str(c) for c in z["classes"]]
            for i, (img, label) in enumerate(zip(z["images"], z["labels"])):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield Image.fromarray(img), classes[int(label)], {"dataset": name, "split": split,
                                                                  "file": f.name, "index": i}
    elif name == "imagenette":
        z = np.load(root / "imagenette" / f"{'train' if split == 'train' else 'val'}_96.npz")
        classes, jpeg, offsets = [str(c) for c in z["classes"]], z["jpeg"], z["offsets"]
        n = len(offsets) - 1 if limit is None else min(limit, len(offsets) - 1)
        for i in range(n):
            yield (jpeg[offsets[i]:offsets[i + 1]].tobytes(), classes[int(z["labels"][i])],
                   {"dataset": name, "split": split, "file": str(z["filenames"][i])})
    else:
        sys.exit(f"error: unknown data set {name!r}; choose cifar10 or imagenette")


def _from_dir(folder: Path, limit: int | None) -> Iterator[tuple[bytes, str | None, dict]]:
    from service.state import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for p in files[:limit]:
        rel = p.relative_to(folder)
        yield p.read_bytes(), (rel.parts[0] if len(rel.parts) > 1 else None), {"file": rel.as_posix()}


def gallery(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m service gallery", description="build or list galleries")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fill a gallery in bulk (labels: sub-folder names or data set classes)")
    b.add_argument("name")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-dir", help="a folder of images; CLASS/IMAGE sub-folders become labels")
    src.add_argument("--from-data", choices=["cifar10", "imagenette"], help="a data set of ../shared/data")
    b.add_argument("--split", default="train", choices=["train", "test", "val"])
    b.add_argument("--limit", type=int, help="at most this many images")
    b.add_argument("--dataset-dir", help="folder holding cifar10/ and imagenette/ (default $ZOO_DATA_DIR, "
                                         "then ../shared/data)")
    _add_common(b)
    ls = sub.add_parser("list", help="list galleries")
    _add_common(ls)
    args = p.parse_args(argv)
    settings = _settings(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.gallery import GalleryStore

    if args.command == "list":
        store = GalleryStore(settings.data_dir)
        for g in store.list():
            print(f"{g['name']:<24} {g['count']:>8} items  dim {g['dim']:<5} model {g['model']}")
        return
    _check_model(settings)
    _build(args, settings, GalleryStore(settings.data_dir, settings.index_threshold, settings.index_large))


def _build(args: argparse.Namespace, settings: Settings, store) -> None:
    import numpy as np
    from tqdm import tqdm

    from service.errors import ServiceError
    from service.images import ImageLimits, decode_image, preprocess
    from service.runtime import load_runtime
    from service.state import thumbnail_jpeg

    rt = load_runtime(settings.model_folder(), settings.runtime, settings.device, precision=settings.precision,
                      cache_dir=settings.onnx_cache_dir())
    info = rt.info
    limits = ImageLimits(settings.max_image_pixels, settings.min_image_side, tuple(settings.formats))
    if args.from_dir:
        items, total = _from_dir(Path(args.from_dir), args.limit), None
    else:
        items, total = _from_data(args.from_data, args.split, _dataset_root(args.dataset_dir), args.limit), args.limit

    def prepare(item):
        src, label, meta = item
        try:
            img = decode_image(src, limits, meta["file"]) if isinstance(src, bytes) else src.convert("RGB")
        except ServiceError as e:
            log.warning("skipped %s: %s", meta["file"], e.message)
            return None
        return preprocess(img, info.preprocessing), label, meta, thumbnail_jpeg(img)

    added = 0
    with ThreadPoolExecutor(settings.decode_threads) as pool, tqdm(total=total, unit="img", desc=args.name) as bar:
        batch: list = []

        def flush() -> None:
            nonlocal added
            if batch:
                vectors = rt.embed(np.stack([b[0] for b in batch]))
                store.add(args.name, vectors, info.fingerprint, info.name, [b[1] for b in batch],
                          [b[2] for b in batch], [b[3] for b in batch] if settings.store_thumbnails else None)
                added += len(batch)
                bar.update(len(batch))
                batch.clear()

        # map chunk by chunk: Executor.map would otherwise read the whole data set into memory at once
        for chunk in iter(lambda: list(itertools.islice(items, 4 * settings.max_batch)), []):
            for prepared in pool.map(prepare, chunk):
                if prepared is not None:
                    batch.append(prepared)
                if len(batch) >= settings.max_batch:
                    flush()
        flush()
    store.ensure_all_indexes()
    store.close()
    print(f"gallery {args.name!r}: added {added} items ({rt.kind} runtime, model {info.name}); "
          f"stored in {settings.data_dir}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "gallery":
        gallery(argv[1:])
    else:
        serve(argv[1:] if argv and argv[0] == "serve" else argv)


if __name__ == "__main__":
    main()
