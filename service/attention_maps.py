"""DINO-style attention maps: thresholding by attention mass, and PNG overlays of one head or all of them."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageOps

TILE = 192  # pixels per head in the PNG grid: small model inputs (32-96 px) are scaled up to be seen


def keep_top_mass(attn: np.ndarray, threshold: float) -> np.ndarray:
    """Per row, 1 for the patches holding the top `threshold` fraction of the attention mass, else 0.

    This is the mask of DINO's visualisation: sort ascending, normalise, keep where the cumulative sum
    exceeds `1 - threshold`.
    """
    order = np.argsort(attn, axis=-1)
    sorted_vals = np.take_along_axis(attn, order, axis=-1)
    sorted_vals = sorted_vals / np.maximum(sorted_vals.sum(axis=-1, keepdims=True), 1e-12)
    keep_sorted = np.cumsum(sorted_vals, axis=-1) > (1.0 - threshold)
    mask = np.zeros_like(attn, dtype=np.float32)
    np.put_along_axis(mask, order, keep_sorted.astype(np.float32), axis=-1)
    return mask


def select_heads(attn: np.ndarray, head: str | int | None) -> tuple[np.ndarray, list[str]]:
    """`(heads, N)` -> the requested rows and their captions: all heads, one index, or their mean."""
    if head is None:
        return attn, [f"head {i}" for i in range(attn.shape[0])]
    if head == "mean":
        return attn.mean(axis=0, keepdims=True), ["mean of heads"]
    return attn[int(head): int(head) + 1], [f"head {int(head)}"]


def overlay_png(image: Image.Image, maps: np.ndarray, grid: tuple[int, int], captions: list[str]) -> bytes:
    """The model's view of the image followed by each map over it, in a near-square grid of tiles."""
    base = image.convert("RGB").resize((TILE, TILE), Image.Resampling.BICUBIC)
    tiles = [(base, "input")]
    for m, caption in zip(maps, captions):
        m = m.reshape(grid).astype(np.float64)
        span = m.max() - m.min()
        gray = ((m - m.min()) / span * 255 if span > 0 else np.zeros_like(m)).astype(np.uint8)
        heat = Image.fromarray(gray, "L").resize((TILE, TILE), Image.Resampling.NEAREST)
        heat = ImageOps.colorize(heat, black="#000030", mid="#d01010", white="#ffff40")
        tiles.append((Image.blend(base, heat, 0.6), caption))
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * TILE, rows * TILE), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (tile, caption) in enumerate(tiles):
        x, y = (k % cols) * TILE, (k // cols) * TILE
        sheet.paste(tile, (x, y))
        draw.rectangle((x, y, x + 7 * len(caption) + 6, y + 14), fill="black")
        draw.text((x + 3, y + 2), caption, fill="white")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
