"""Turn untrusted upload bytes into model input: decode, validate (size, pixels, format), convert, preprocess.

Every refusal is a `ServiceError` whose message says what was wrong, so a bad upload gets a 4xx, not a 500.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import BadImage, BadRequest, PayloadTooLarge, UnsupportedMedia
from zoo.backbones import Preprocessing


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 40_000_000
    min_side: int = 8
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


def decode_base64(text: object, where: str) -> bytes:
    """Bytes from a base64 string or a `data:` URI. `where` names the field in error messages."""
    if not isinstance(text, str):
        raise BadRequest(f"{where} must be a base64 string or a data: URI, not {type(text).__name__}")
    payload = text.strip()
    if payload.startswith(("http://", "https://")):
        raise BadRequest(f"{where} is a URL; the service does not fetch URLs, send the image bytes (base64)")
    m = _DATA_URI.match(payload)
    if payload.startswith("data:"):
        if not m or not m.group("b64"):
            raise BadRequest(f"{where} is a data: URI without ';base64'; encode the image as base64")
        payload = payload[m.end():]
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where} is not valid base64 ({e})") from e
    if not data:
        raise BadImage(f"{where} is empty")
    return data


def decode_image(data: bytes, limits: ImageLimits, name: str = "image", target_side: int | None = None) -> Image.Image:
    """An 8-bit RGB image from encoded bytes, EXIF orientation applied, transparency flattened on white."""
    if not data:
        raise BadImage(f"{name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own pixel limit
            img = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except UnidentifiedImageError as e:
        raise UnsupportedMedia(
            f"{name} is not an image in an accepted format ({', '.join(limits.formats)}) or its header "
            "is corrupt") from e
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"{name} is too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImage(f"{name} could not be read: it is truncated or corrupt ({e})") from e
    w, h = img.size
    if w * h > limits.max_pixels:
        raise PayloadTooLarge(
            f"{name} is {w}x{h} = {w * h:,} pixels; the limit is {limits.max_pixels:,} (ZOO_MAX_IMAGE_PIXELS)")
    if min(w, h) < limits.min_side:
        raise BadImage(f"{name} is {w}x{h} pixels; each side must be at least {limits.min_side} "
                       "(ZOO_MIN_IMAGE_SIDE)")
    if getattr(img, "n_frames", 1) > 1:
        raise BadImage(f"{name} is an animated {img.format} with {img.n_frames} frames; send a single still image")
    if target_side and img.format == "JPEG" and min(w, h) >= 4 * target_side:
        img.draft("RGB", (target_side, target_side))  # decode big JPEGs at a reduced DCT scale: much faster
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb8(img)
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"{name} is too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImage(f"{name} is truncated or corrupt ({e}); send the complete file") from e


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any Pillow mode (1, L, P, I;16, I, F, CMYK, LA, RGBA, ...) as 8-bit RGB."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0  # 16-bit data is scaled, 8-bit data kept
        gray = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


@functools.lru_cache(maxsize=8)
def _transform(pre: Preprocessing):
    from timm.data import create_transform

    # timm's evaluation transform: shorter side to size / crop_pct, centre crop, to tensor, normalise.
    return create_transform(input_size=tuple(pre.input_size), is_training=False, interpolation=pre.interpolation,
                            mean=tuple(pre.mean), std=tuple(pre.std), crop_pct=pre.crop_pct)


def preprocess(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """`(3, H, W)` float32, prepared exactly as the encoder expects (its `preprocessing`)."""
    return _transform(pre)(img).numpy().astype(np.float32, copy=False)


def crop_for_display(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """The RGB pixels the model sees (resized and centre-cropped, not normalised): for attention overlays."""
    for step in _transform(pre).transforms:
        if not isinstance(img, Image.Image):
            break
        if type(step).__name__ in ("Resize", "CenterCrop"):
            img = step(img)
    return img


def load_for_model(data: bytes, pre: Preprocessing, limits: ImageLimits, name: str = "image") -> np.ndarray:
    """Decode + preprocess: the job the decode thread pool does for each uploaded image."""
    return preprocess(decode_image(data, limits, name, target_side=pre.image_size), pre)
