"""Data sets: CIFAR-10 and Imagenette (96 px) from the shared `.npz` files, and any image folder.

Every data set yields uint8 RGB images (HWC numpy for in-memory sets, PIL-decoded for folders) and,
when labelled, int64 labels. View pipelines turn them into tensors; see `training/augment.py`.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from training.errors import DataNotFoundError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
BUILTIN = ("cifar10", "imagenette")
_FILES = {
    "cifar10": {"train": ["cifar10/train_0.npz", "cifar10/train_1.npz"], "test": ["cifar10/test.npz"]},
    "imagenette": {"train": ["imagenette/train_96.npz"], "test": ["imagenette/val_96.npz"]},
}


def candidate_data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where data sets are looked for, in order: the option, $ZOO_DATA_DIR, ../shared/data beside the project."""
    dirs: list[Path] = []
    if data_dir:
        return [Path(data_dir)]
    if os.environ.get("ZOO_DATA_DIR"):
        dirs.append(Path(os.environ["ZOO_DATA_DIR"]))
    project = Path(__file__).resolve().parents[1]
    dirs.append(project.parent / "shared" / "data")
    cwd_guess = Path.cwd().parent / "shared" / "data"
    if cwd_guess.resolve() != dirs[-1].resolve():
        dirs.append(cwd_guess)
    return dirs


def find_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    looked = candidate_data_dirs(data_dir)
    for d in looked:
        if all((d / f).is_file() for f in _FILES[name]["train"] + _FILES[name]["test"]):
            return d
    raise DataNotFoundError(
        f"data set {name!r} not found; looked in: {', '.join(str(d) for d in looked)}. "
        f"Pass --data-dir DIR (holding {_FILES[name]['train'][0]}) or set ZOO_DATA_DIR")


@dataclass
class ImageData(Dataset):
    """A labelled or unlabelled image set. `images` is uint8 (N, H, W, 3) or a list of file paths."""

    name: str
    images: np.ndarray | list[Path]
    labels: np.ndarray | None
    classes: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)

    @property
    def image_size(self) -> int | None:
        return int(self.images.shape[1]) if self.in_memory else None

    def image(self, i: int) -> torch.Tensor:
        """Image `i` as a uint8 CHW tensor."""
        if self.in_memory:
            return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        return torch.from_numpy(np.asarray(_open_rgb(self.images[i]))).permute(2, 0, 1).contiguous()

    def label(self, i: int) -> int:
        return int(self.labels[i]) if self.labels is not None else -1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.image(i), self.label(i)

    def subset(self, n: int | None) -> ImageData:
        """The first `n` images (the shared files are shuffled, so a prefix is roughly class-balanced)."""
        if n is None or n >= len(self):
            return self
        labels = self.labels[:n] if self.labels is not None else None
        return ImageData(self.name, self.images[:n], labels, self.classes)


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 limit: int | None = None) -> ImageData:
    """`cifar10`, `imagenette`, or a path to an image folder (labelled by sub-folder, or flat)."""
    if name in BUILTIN:
        root = find_data_dir(name, data_dir)
        images, labels, classes = _load_npz(name, split, str(root))
        return ImageData(name, images, labels, classes).subset(limit)
    path = Path(name)
    if path.is_dir():
        return image_folder(path).subset(limit)
    raise DataNotFoundError(f"unknown data set {name!r}: use one of {', '.join(BUILTIN)} or a path to an image folder")


@functools.lru_cache(maxsize=4)
def _load_npz(name: str, split: str, root: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if split not in ("train", "test", "val"):
        raise DataNotFoundError(f"unknown split {split!r}: use train or test")
    files = [Path(root) / f for f in _FILES[name]["test" if split in ("test", "val") else "train"]]
    parts = [np.load(f) for f in files]
    classes = [str(c) for c in parts[0]["classes"]]
    labels = np.concatenate([z["labels"] for z in parts]).astype(np.int64)
    if name == "cifar10":
        images = np.concatenate([z["images"] for z in parts])
    else:
        images = np.concatenate([_decode_jpegs(z["jpeg"], z["offsets"]) for z in parts])
    return images, labels, classes


def _decode_jpegs(jpeg: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    first = np.asarray(Image.open(io.BytesIO(jpeg[offsets[0]:offsets[1]].tobytes())).convert("RGB"))
    out = np.empty((len(offsets) - 1, *first.shape), np.uint8)
    for i in range(len(out)):
        out[i] = np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
    return out


def image_folder(root: str | os.PathLike) -> ImageData:
    """Images under `root`: `root/<class>/<image>` is labelled by sub-folder; images directly in `root` are
    unlabelled. Corrupt files are found when read, with an error naming them."""
    root = Path(root)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        files, labels = [], []
        for k, d in enumerate(subdirs):
            found = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            files += found
            labels += [k] * len(found)
        classes = [d.name for d in subdirs]
        label_array: np.ndarray | None = np.asarray(labels, np.int64)
    else:
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        classes, label_array = [], None
    if not files:
        raise DataNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}")
    return ImageData(root.name, files, label_array, classes)


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataNotFoundError(f"cannot read image {path}: {e}; remove or replace the file") from e


class ViewDataset(Dataset):
    """Applies a view-making function to each image with randomness fixed by (seed, epoch, index).

    Seeding per sample makes augmentations independent of worker count and of where a run was resumed,
    which is what makes resumption exact."""

    def __init__(self, data: ImageData, make_views: Callable[[torch.Tensor, int], list[torch.Tensor]], seed: int):
        self.data = data
        self.make_views = make_views
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int, int]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, i))
            views = self.make_views(self.data.image(i), i)
        return views, self.data.label(i), i


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 10_000_019 + index * 7919) % (2**63 - 1)


def epoch_indices(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1, batch_size: int = 1) -> list[int]:
    """This process's share of the epoch's shuffled order, trimmed to full global batches."""
    g = torch.Generator().manual_seed(seed + 1_000 * epoch)
    order = torch.randperm(n, generator=g).tolist()
    global_batch = batch_size * world
    usable = (n // global_batch) * global_batch
    return order[:usable][rank::world]


def collate_views(batch: Sequence[tuple[list[torch.Tensor], int, int]]) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                                  torch.Tensor]:
    n_views = len(batch[0][0])
    views = [torch.stack([b[0][v] for b in batch]) for v in range(n_views)]
    labels = torch.tensor([b[1] for b in batch])
    index = torch.tensor([b[2] for b in batch])
    return views, labels, index
