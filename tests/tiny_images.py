"""The tiny in-memory data set the trainer tests share (also used by scripts they run in a fresh process)."""

from __future__ import annotations

import numpy as np

from training.data import ImageData


def make_tiny_data() -> ImageData:
    """64 random 16x16 images in 4 classes whose colour differs by class (so kNN has something to find)."""
    g = np.random.default_rng(0)
    labels = np.arange(64) % 4
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])[labels]
    images = np.clip(base[:, None, None, :] + g.normal(0, 40, (64, 16, 16, 3)), 0, 255).astype(np.uint8)
    return ImageData("tiny", images, labels.astype(np.int64), ["r", "g", "b", "y"])
