"""service.images: decoding untrusted bytes into model input, and refusing what cannot be used."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import BadImage, BadRequest, PayloadTooLarge, UnsupportedMedia
from service.images import ImageLimits, decode_base64, decode_image, preprocess
from zoo.backbones import Preprocessing

LIMITS = ImageLimits(max_pixels=10_000_000, min_side=8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 40, h: int = 24) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    arr = np.stack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)], -1)
    return Image.fromarray(arr)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width x height` pixels (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_exif_orientation_is_applied():
    img = gradient(40, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif), LIMITS)
    assert out.size == (24, 40)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGBA", "LA"])
def test_modes_become_rgb(mode):
    img = gradient().convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(encode(img, fmt), LIMITS)
    assert out.mode == "RGB" and out.size == img.size


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    out = np.asarray(decode_image(encode(img, "PNG"), LIMITS))
    assert (out == 255).all()


def test_16_bit_png_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "PNG"), LIMITS))[..., 0]
    assert out.min() == 0 and out.max() == 255 and 100 < out.mean() < 155


def test_preprocess_resizes_crops_and_normalises():
    pre = Preprocessing(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)
    x = preprocess(Image.new("RGB", (64, 40), (128, 128, 128)), pre)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.25, atol=1e-5)


def test_big_jpeg_is_decoded_at_reduced_scale():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 1200, 3), np.uint8))
    out = decode_image(encode(img, "JPEG"), LIMITS, target_side=96)
    assert min(out.size) >= 96 and out.size[0] < 1200


@pytest.mark.parametrize("data, error, words", [
    (b"", BadImage, "empty"),
    (b"hello, I am a text file\n", UnsupportedMedia, "not an image"),
    (encode(gradient(), "JPEG")[:200], BadImage, "truncated"),
    (png_header_only(100_000, 100_000), PayloadTooLarge, "pixels"),
    (encode(Image.new("RGB", (1, 1)), "PNG"), BadImage, "at least 8"),
    (encode(Image.new("RGB", (16, 16)), "ICO"), UnsupportedMedia, "accepted format"),
])
def test_unusable_bytes_are_refused_with_a_reason(data, error, words):
    with pytest.raises(error, match=words):
        decode_image(data, LIMITS)


def test_animated_gif_is_refused():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(BadImage, match="animated"):
        decode_image(buf.getvalue(), LIMITS)


def test_base64_and_data_uris():
    assert decode_base64("data:image/png;base64,aGVsbG8=", "x") == b"hello"
    assert decode_base64("aGVs\nbG8=", "x") == b"hello"
    for bad in ("not base64!!", "data:image/png,raw", "https://example.com/a.jpg", 5):
        with pytest.raises(BadRequest):
            decode_base64(bad, "x")
