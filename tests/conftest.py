"""Shared fixtures: tiny in-memory data sets, and where the real data lives when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_images import make_tiny_data

from training.data import ImageData, candidate_data_dirs

torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_data_dir() -> Path | None:
    for d in candidate_data_dirs():
        if (d / "cifar10" / "test.npz").is_file():
            return d
    return None


@pytest.fixture
def tiny_data() -> ImageData:
    return make_tiny_data()


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("CIFAR-10 not found (../shared/data or $ZOO_DATA_DIR)")
    return d
