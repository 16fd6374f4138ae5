"""Training checkpoints: the full state of a run (method with its queues and momentum networks, optimizer,
step, RNG), written atomically, read with `torch.load(weights_only=True)`.

The previous good checkpoint is kept as `checkpoint-prev.pt`, so a damaged `checkpoint-last.pt` (a full
disk, a copy cut short) never costs the whole run."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from training.errors import CheckpointError
from zoo.atomic import atomic_path

LAST = "checkpoint-last.pt"
PREV = "checkpoint-prev.pt"
FORMAT = "ssl-zoo-checkpoint/1"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    path = run_dir / LAST
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
        if path.exists():
            _keep_previous(path, run_dir / PREV)
    return path


def _keep_previous(path: Path, prev: Path) -> None:
    """Make `prev` a second name of the current checkpoint, so `path` always exists while it is replaced."""
    tmp = prev.with_name(prev.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this filesystem
        shutil.copy2(path, tmp)
    os.replace(tmp, prev)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; start without --resume")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        prev = path.with_name(PREV)
        hint = (f"; the previous good checkpoint is {prev}: move it to {path.name} to resume from it"
                if prev.is_file() and prev != path else "")
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_first_line(e)}){hint}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ssl-zoo training checkpoint")
    return state


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
