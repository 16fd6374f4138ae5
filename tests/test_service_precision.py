"""Which ONNX graph the service runs: exported at start when a folder has none, int8 on CPU when it keeps the fp32
contract, cached between starts, refusals remembered and explained."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from service_testing import ThreadServer, jpeg_bytes, make_model_folder, synthetic_images

import zoo
from service.images import ImageLimits, decode_image, preprocess
from service.runtime import RuntimeLoadError, cuda_provider_usable, load_runtime
from service.settings import DEFAULT_MODEL_DIR, Settings


def _embed_and_attend(url: str, images: list[bytes]) -> tuple[dict, np.ndarray, np.ndarray]:
    with httpx.Client(base_url=url, timeout=60) as c:
        model = c.get("/models").json()["models"][0]
        r = c.post("/embed", files=[("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(images)],
                   data={"normalize": "false"})
        assert r.status_code == 200, r.text
        a = c.post("/attention", files={"file": ("0.jpg", images[0], "image/jpeg")}, data={"head": "0"})
        assert a.status_code == 200, a.text
    return model, np.asarray(r.json()["embeddings"], np.float32), np.asarray(a.json()["maps"], np.float32)


def _reference(images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    encoder = zoo.load(str(DEFAULT_MODEL_DIR), device="cpu")
    x = torch.from_numpy(np.stack([preprocess(decode_image(b, ImageLimits()), encoder.preprocessing)
                                   for b in images]))
    with torch.inference_mode():
        return encoder(x).numpy(), encoder.cls_attention(x[:1])[0, 0].numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.skipif(cuda_provider_usable(), reason="int8 is the CPU choice; with CUDA the service serves fp32")
def test_bundled_model_is_exported_once_and_served_int8_within_the_fp32_contract(tmp_path):
    images = [jpeg_bytes(im) for im in synthetic_images(4, size=120)]
    want, want_attention = _reference(images)
    data = tmp_path / "data"

    with ThreadServer(Settings(data_dir=data, default_gallery_dir=None)) as s:
        model, got, attention = _embed_and_attend(s.url, images)
    assert model["runtime"] == "onnx" and model["precision"] == "int8"
    assert "exported at start" in model["runtime_reason"] and "int8 copy made at start" in model["runtime_reason"]
    assert _cosines(got, want).min() >= 0.9999
    assert attention.size == (96 // model["patch_size"]) ** 2  # head 0's map over the 12 x 12 patches
    assert np.abs(attention.ravel() - want_attention).max() <= 1e-3

    # The second start reuses both graphs; fp32 on request gives the exact numbers.
    with ThreadServer(Settings(data_dir=data, default_gallery_dir=None, precision="fp32")) as s:
        model, got, _ = _embed_and_attend(s.url, images)
    assert model["precision"] == "fp32" and "using the export cached" in model["runtime_reason"]
    assert np.abs(got - want).max() < 1e-4
    assert len(list((data / "onnx").iterdir())) == 2  # one fp32 export, one int8 copy: nothing made twice


def test_int8_refusal_is_explained_remembered_and_falls_back_to_fp32(tmp_path):
    folder = make_model_folder("vit_tiny_p8", tmp_path / "model", name="random_vit")
    cache = tmp_path / "onnx"
    with pytest.raises(RuntimeLoadError, match=r"--precision int8 is not possible: .*embedding cosine 0\.99\d+ <"):
        load_runtime(folder, precision="int8", cache_dir=cache)
    with pytest.raises(RuntimeLoadError, match="decided earlier"):
        load_runtime(folder, precision="int8", cache_dir=cache)
    rt = load_runtime(folder, precision="auto", cache_dir=cache)
    assert rt.kind == "onnx" and rt.precision == "fp32" and "int8 was refused" in rt.reason


def test_int8_needs_onnx_runtime(tmp_path):
    folder = make_model_folder("vit_tiny_p8", tmp_path / "model")
    with pytest.raises(RuntimeLoadError, match="cannot be combined with --runtime torch"):
        load_runtime(folder, "torch", precision="int8", cache_dir=tmp_path / "onnx")
