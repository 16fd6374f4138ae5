"""Resolve a model name, folder or Hub repo into a model folder on disk, downloading into the cache if needed.

Cache layout under `zoo_home()` (`$ZOO_HOME`, default `~/.cache/ssl-zoo`):

    downloads/NAME/FILE          the authors' file as downloaded (kept, so conversion can be redone)
    downloads/NAME/FILE.sha256   its sha256, recorded on first download when the registry has none
    converted/NAME/              the model folder converted from it: later loads read only safetensors
    hub/                         huggingface_hub's cache for hf:// repos
    models/NAME/                 your own model folders, registered by name

Downloads go to a temporary file beside the target, are checked (length, sha256) and renamed atomically;
a failed or interrupted transfer leaves nothing in the cache. `ZOO_OFFLINE=1` or `HF_HUB_OFFLINE=1` uses the
cache only. Checkpoints are read with `torch.load(weights_only=True)`: a file that needs arbitrary
unpickling is refused (`UnsafeCheckpointError`).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import pickle
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from zoo.atomic import atomic_path, atomic_write
from zoo.errors import (
    ChecksumMismatchError,
    ModelFolderError,
    UnsafeCheckpointError,
    WeightsUnavailableError,
    ZooError,
)
from zoo.folder import is_model_folder
from zoo.registry import ModelSpec, WeightSource, spec, zoo_home

log = logging.getLogger(__name__)

HF_PREFIXES = ("hf://", "hf-hub:")
_CHUNK = 1 << 20


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("ZOO_OFFLINE", "HF_HUB_OFFLINE"))


def _timeout() -> float:
    # One socket timeout for connect and each read: short, so a machine without network fails in seconds.
    return float(os.environ.get("ZOO_DOWNLOAD_TIMEOUT", "10"))


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True) -> str:
    """Download `url` to `dest` (atomically) and return its sha256; `sha256`, when given, must match.

    Nothing appears at `dest` unless the whole file arrived and matched.
    """
    dest = Path(dest)
    if is_offline():
        raise WeightsUnavailableError(f"offline mode (ZOO_OFFLINE/HF_HUB_OFFLINE): {dest} is not in the cache; "
                                      f"download {url} elsewhere and place it there")
    manual = f"download it yourself and place it at {dest}"
    request = urllib.request.Request(url, headers={"User-Agent": "ssl-zoo"})
    try:
        response = urllib.request.urlopen(request, timeout=_timeout())
    except urllib.error.HTTPError as e:
        raise WeightsUnavailableError(f"could not download {url}: HTTP {e.code} {e.reason}; {manual}") from e
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsUnavailableError(f"could not download {url} (no network? {reason}); {manual}") from e
    with response, atomic_path(dest) as tmp:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        digest, received = hashlib.sha256(), 0
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                   disable=not progress, file=sys.stderr, leave=False)
        try:
            with open(tmp, "wb") as f, bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (http.client.IncompleteRead, OSError) as e:
            raise WeightsUnavailableError(f"download of {url} was interrupted after {received} bytes ({e}); "
                                          "nothing was kept, try again") from e
        if total is not None and received != total:
            raise WeightsUnavailableError(f"download of {url} was interrupted: {received} of {total} bytes "
                                          "arrived; nothing was kept, try again")
        got = digest.hexdigest()
        if sha256 and got != sha256.lower():
            raise ChecksumMismatchError(f"{url} has sha256 {got}, expected {sha256}; the file was not kept "
                                        "(corrupted transfer, or the file changed upstream)")
    return got


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint without running code: safetensors, or `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFolderError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        # DINO's full checkpoints keep their argparse options; a Namespace holds plain values only.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path} needs arbitrary unpickling to load, which could run code, so it was refused ({first[:200]}). "
            "If you trust the file, extract its tensors in a sandbox (e.g. torch.save of its state dict) "
            "and convert that") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelFolderError(f"{path} is not a readable PyTorch checkpoint ({e})") from e


# --- cache paths ---------------------------------------------------------------------------------------

def download_path(s: ModelSpec, source: WeightSource | None = None) -> Path:
    source = source or s.sources[0]
    return zoo_home() / "downloads" / s.name / source.filename


def converted_path(s: ModelSpec) -> Path:
    return zoo_home() / "converted" / s.name


def _recorded_sha(path: Path) -> str | None:
    side = path.with_name(path.name + ".sha256")
    return side.read_text().split()[0] if side.is_file() else None


def _record_sha(path: Path, digest: str) -> None:
    atomic_write(path.with_name(path.name + ".sha256"), lambda p: p.write_text(f"{digest}  {path.name}\n"))


def fetch(s: ModelSpec, progress: bool = True) -> Path:
    """The authors' weight file of `s` in the cache, downloaded if missing; checked against its sha256."""
    if not s.sources:
        raise WeightsUnavailableError(f"{s.name} has no weight source")
    source = s.sources[0]
    path = download_path(s, source)
    expected = source.sha256 or _recorded_sha(path)
    if not path.is_file():
        if source.url is None:
            raise WeightsUnavailableError(
                f"{s.name} has no direct download ({source.note or 'manual download'}). Original weights: "
                f"{source.upstream}. Place the converted file at {path}")
        if is_offline():
            raise WeightsUnavailableError(
                f"offline mode (ZOO_OFFLINE/HF_HUB_OFFLINE): {s.name} needs {source.url}, which is not in the "
                f"cache; download it elsewhere and place it at {path}")
        log.info("downloading %s -> %s", source.url, path)
        digest = download(source.url, path, sha256=expected, progress=progress)
        if expected is None:
            _record_sha(path, digest)
            log.warning("%s: no published sha256; recorded %s on first download (trust on first use)",
                        s.name, digest)
        return path
    digest = sha256_of(path)
    if expected is None:
        _record_sha(path, digest)
        log.warning("%s: %s has no known sha256; recorded %s (trust on first use)", s.name, path, digest)
    elif digest != expected.lower():
        raise ChecksumMismatchError(f"{path} has sha256 {digest}, expected {expected}; delete it and load again")
    return path


def resolve_name(name: str, progress: bool = True) -> Path:
    """A model folder for registry name `name`: local, already converted, or fetched and converted now."""
    from zoo.convert import convert_checkpoint

    s = spec(name)
    if s.folder:
        return Path(s.folder)
    out = converted_path(s)
    if is_model_folder(out):
        return out
    source = s.sources[0] if s.sources else None
    raw = fetch(s, progress=progress)
    meta = {"name": s.name, "method": s.method, "dataset": s.dataset, "epochs": s.epochs, "license": s.license,
            "paper": s.paper, "source": {"url": source.url, "upstream": source.upstream,
                                         "sha256": _recorded_sha(raw) or source.sha256},
            "reported": [vars(r).copy() for r in s.reported]}
    log.info("converting %s (%s layout) -> %s", raw, source.layout, out)
    return convert_checkpoint(source.layout, raw, s.arch, out, zoo_meta=meta, model_args=s.model_args,
                              preprocessing=s.preprocessing)


def resolve_hf(ref: str) -> Path:
    """Download (or find in the cache) `config.json` + `model.safetensors` of `hf://ORG/REPO[@REV]`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = ref.split(":", 1)[1].lstrip("/")
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1:
        raise ZooError(f"{ref!r} is not a Hub reference; write hf://ORG/REPO (or hf-hub:ORG/REPO)")
    try:
        folder = snapshot_download(repo_id=repo, revision=revision or None, cache_dir=zoo_home() / "hub",
                                   allow_patterns=["config.json", "model.safetensors"],
                                   local_files_only=is_offline())
    except LocalEntryNotFoundError as e:
        raise WeightsUnavailableError(f"{repo} is not in the Hub cache {zoo_home() / 'hub'} and cannot be "
                                      f"downloaded (offline or no network): {e}") from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise WeightsUnavailableError(f"could not fetch {repo} from the Hugging Face Hub: {e}") from e
    if not is_model_folder(folder):
        raise ModelFolderError(f"Hub repo {repo} has no config.json + model.safetensors; it is not a model folder")
    return Path(folder)


def resolve(name_or_path: str | os.PathLike, progress: bool = True) -> Path:
    """The model folder behind a folder path, an `hf://` reference or a registry name."""
    ref = str(name_or_path)
    if ref.startswith(HF_PREFIXES):
        return resolve_hf(ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not is_model_folder(path):
            raise ModelFolderError(f"{path} is a folder but not a model folder (config.json + model.safetensors)")
        return path
    if os.sep in ref or ref.startswith((".", "~")):
        raise ModelFolderError(f"no model folder at {ref!r}")
    return resolve_name(ref, progress=progress)
