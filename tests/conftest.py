"""Shared fixtures: tiny in-memory data sets, and where the real data lives when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import ImageData, candidate_data_dirs

torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_data_dir() -> Path | None:
    for d in candidate_data_dirs():
        if (d / "cifar10" / "test.npz").is_file():
            return d
    return None


@pytest.fixture
def tiny_data() -> ImageData:
    """64 random 16x16 images in 4 classes whose colour differs by class (so kNN has something to find)."""
    g = np.random.default_rng(0)
    labels = np.arange(64) % 4
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])[labels]
    images = np.clip(base[:, None, None, :] + g.normal(0, 40, (64, 16, 16, 3)), 0, 255).astype(np.uint8)
    return ImageData("tiny", images, labels.astype(np.int64), ["r", "g", "b", "y"])


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("CIFAR-10 not found (../shared/data or $ZOO_DATA_DIR)")
    return d
