"""The real app under uvicorn on 127.0.0.1, served by ONNX Runtime (vit_tiny_p8, random weights): every route,
parity with `zoo.load`, galleries, attention, metrics, and a list of malformed inputs that must each get a 4xx."""

from __future__ import annotations

import base64
import io
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from service_testing import (
    ROOT,
    ThreadServer,
    cifar_sample,
    jpeg_bytes,
    make_model_folder,
    png_bytes,
    synthetic_images,
)

import zoo
from service.images import ImageLimits, decode_image, preprocess
from service.settings import Settings
from zoo.onnx import export_onnx

KEY = {"X-API-Key": "secret"}


def sample_images(n: int) -> list[Image.Image]:
    cifar = cifar_sample("test", n)
    if cifar is None:
        return synthetic_images(n)
    return [Image.fromarray(a) for a in cifar[0]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    folder = make_model_folder("vit_tiny_p8", tmp / "model", name="vit_test")
    export_onnx(str(folder))
    gallery_dir = tmp / "default_gallery"
    for cls in sorted((ROOT / "service" / "default" / "gallery").iterdir()):
        if cls.is_dir():
            (gallery_dir / cls.name).mkdir(parents=True)
            for f in sorted(cls.glob("*.jpg"))[:2]:
                shutil.copy(f, gallery_dir / cls.name / f.name)
    settings = Settings(model=str(folder), data_dir=tmp / "data", default_gallery_dir=gallery_dir, api_key="secret",
                        max_body_bytes=2 * 1024 * 1024, max_images_per_request=16, max_queue=12)
    with ThreadServer(settings) as s:
        s.folder = folder
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def files_field(images: list[bytes], field: str = "files"):
    return [(field, (f"img{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]


def test_models_healthz_readyz_and_docs(client):
    m = client.get("/models").json()["models"][0]
    assert m["name"] == "vit_test" and m["dim"] == 192 and m["heads"] == 3 and m["input_size"] == [3, 96, 96]
    assert m["runtime"] == "onnx" and m["provider"] == "CPUExecutionProvider" and m["device"] == "cpu"
    # Random ViT weights quantize too coarsely for the parity check: the service says so and serves fp32.
    assert m["precision"] == "fp32" and "int8 was refused" in m["runtime_reason"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/embed", "/v1/embeddings", "/knn", "/attention", "/galleries/{name}/items"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_embed_equals_zoo_load(client, server):
    images = [jpeg_bytes(im) for im in sample_images(6)]
    r = client.post("/embed", files=files_field(images), data={"normalize": "false"})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["embeddings"], dtype=np.float32)
    encoder = zoo.load(str(server.folder), device="cpu")
    x = np.stack([preprocess(decode_image(b, ImageLimits()), encoder.preprocessing) for b in images])
    with torch.inference_mode():
        want = encoder(torch.from_numpy(x)).numpy()
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999 and np.abs(got - want).max() < 1e-3


def test_embed_json_base64_and_encodings_agree(client):
    data = jpeg_bytes(sample_images(2)[1])
    as_list = client.post("/embed", files=files_field([data])).json()
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    packed = client.post("/embed", json={"images": [uri], "encoding": "base64"}).json()
    assert packed["dim"] == 192 and packed["model"] == "vit_test"
    vec = np.frombuffer(base64.b64decode(packed["embeddings"][0]), dtype="<f4")
    np.testing.assert_allclose(vec, as_list["embeddings"][0], atol=1e-6)
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)


def test_openai_shaped_embeddings(client):
    uris = ["data:image/png;base64," + base64.b64encode(png_bytes(im)).decode() for im in sample_images(3)]
    r = client.post("/v1/embeddings", json={"model": "vit_test", "input": uris, "encoding_format": "float"})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "list" and body["model"] == "vit_test"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and len(body["data"][2]["embedding"]) == 192
    assert body["usage"]["prompt_tokens"] == 3
    assert client.post("/v1/embeddings", json={"model": "other", "input": uris}).status_code == 404


def test_default_gallery_was_built_at_start(client):
    g = client.get("/galleries/default").json()
    assert g["count"] == 20 and g["labels"] == 10 and g["dim"] == 192
    hit = client.post("/knn", json={"embedding": [1.0] * 192, "k": 3}).json()["neighbors"]
    assert len(hit) == 3 and hit[0]["metadata"]["file"].endswith(".jpg")
    thumb = client.get(f"/galleries/default/items/{hit[0]['id']}/thumbnail")
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size == (96, 96)


def test_gallery_life_cycle(client):
    images = [jpeg_bytes(im) for im in sample_images(4)]
    assert client.post("/galleries/mine/items", files=files_field(images)).status_code == 401
    r = client.post("/galleries/mine/items", files=files_field(images), headers=KEY,
                    data={"labels": ["a", "b", "c", "d"], "metadata": '{"source": "test"}'})
    assert r.status_code == 200, r.text
    ids = r.json()["ids"]
    assert len(ids) == 4 and r.json()["count"] == 4
    hits = client.post("/knn", files={"file": ("q.jpg", images[2])}, data={"k": "2", "gallery": "mine"}).json()
    assert hits["neighbors"][0]["id"] == ids[2] and hits["neighbors"][0]["label"] == "c"
    assert hits["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits["neighbors"][0]["metadata"] == {"source": "test"}
    vec = client.post("/galleries/mine/items", headers=KEY,
                      json={"vectors": [[0.0] * 191 + [1.0]], "labels": ["v"], "metadata": [{"n": 1}]}).json()
    assert vec["count"] == 5
    assert client.get("/galleries").json()["galleries"][-1]["name"] == "mine"
    assert client.delete(f"/galleries/mine/items/{ids[2]}").status_code == 401
    assert client.delete(f"/galleries/mine/items/{ids[2]}", headers=KEY).status_code == 200
    hits = client.post("/knn", files={"file": ("q.jpg", images[2])}, data={"k": "5", "gallery": "mine"}).json()
    assert ids[2] not in [h["id"] for h in hits["neighbors"]] and len(hits["neighbors"]) == 4
    assert client.delete(f"/galleries/mine/items/{ids[2]}", headers=KEY).status_code == 404
    assert client.delete("/galleries/mine", headers=KEY).status_code == 200
    assert client.get("/galleries/mine").status_code == 404


def test_attention_json_and_png(client):
    data = jpeg_bytes(sample_images(1)[0])
    j = client.post("/attention", files={"file": ("a.jpg", data)}).json()
    assert j["heads"] == 3 and j["grid"] == [12, 12] and len(j["maps"]) == 3 and len(j["maps"][0]) == 144
    assert 0 < sum(j["maps"][0]) <= 1.0001  # softmax row, minus the CLS token's own share
    t = client.post("/attention", files={"file": ("a.jpg", data)}, data={"threshold": "0.6", "head": "mean"}).json()
    assert len(t["maps"]) == 1 and set(t["maps"][0]) <= {0.0, 1.0} and 0 < sum(t["maps"][0]) < 144
    png = client.post("/attention", files={"file": ("a.jpg", data)}, data={"format": "png"})
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (2 * 192, 2 * 192)  # input + 3 heads in a 2x2 grid
    one = client.post("/attention?format=png&head=1", files={"file": ("a.jpg", data)})
    assert Image.open(io.BytesIO(one.content)).size == (2 * 192, 192)


def test_converted_inputs_embed_like_their_8_bit_rgb_version(client):
    img = sample_images(1)[0].resize((64, 64))
    ref = np.asarray(client.post("/embed", files=files_field([png_bytes(img)])).json()["embeddings"][0])
    gray16 = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    cmyk = img.convert("CMYK")
    rgba = img.convert("RGBA")
    gray_ref = np.asarray(client.post("/embed", files=files_field([png_bytes(img.convert("L"))])).json()
                          ["embeddings"][0])
    for data, want in [(png_bytes(gray16), gray_ref), (jpeg_bytes(cmyk, quality=100), ref), (png_bytes(rgba), ref)]:
        r = client.post("/embed", files=files_field([data]))
        assert r.status_code == 200, r.text
        assert float(np.dot(r.json()["embeddings"][0], want)) > 0.99


def test_concurrent_requests_are_batched(client, server):
    data = [jpeg_bytes(im) for im in sample_images(12)]
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda d: client.post("/embed", files=files_field([d])).status_code, data))
    assert codes == [200] * 12
    text = client.get("/metrics").text
    assert 'zoo_requests_total{method="POST",route="/embed",status="200"}' in text
    count = float(next(line.split()[-1] for line in text.splitlines() if line.startswith('zoo_batch_size_count{task="embed"}')))
    total = float(next(line.split()[-1] for line in text.splitlines() if line.startswith('zoo_batch_size_sum{task="embed"}')))
    assert total / count > 1.0  # some forward passes served several requests
    assert "zoo_queue_depth" in text and "zoo_request_seconds_bucket" in text


def test_a_full_queue_answers_429_with_retry_after(client):
    # the queue holds 12 images (max_queue) and a request may carry 16: 13 images cannot be queued
    r = client.post("/embed", files=files_field([jpeg_bytes(im) for im in sample_images(13)]))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "busy" in r.json()["error"]["message"]


def _truncated_jpeg() -> bytes:
    data = jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    return data[: len(data) // 2]


def _huge_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _ico() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="ICO")
    return buf.getvalue()


def _good() -> bytes:
    return jpeg_bytes(Image.new("RGB", (32, 32), "orange"))


def _chunks(n: int):
    for _ in range(n):
        yield b"x" * 65536


MALFORMED = {
    "truncated JPEG": ("post", "/embed", {"files": files_field([_truncated_jpeg()])}, 400),
    "zero bytes": ("post", "/embed", {"files": files_field([b""])}, 400),
    "text file": ("post", "/embed", {"files": files_field([b"just some text\n"])}, 415),
    "huge dimensions": ("post", "/embed", {"files": files_field([_huge_png()])}, 413),
    "1x1 image": ("post", "/embed", {"files": files_field([png_bytes(Image.new("RGB", (1, 1)))])}, 400),
    "animated GIF": ("post", "/embed", {"files": files_field([_animated_gif()])}, 400),
    "format not accepted (ICO)": ("post", "/embed", {"files": files_field([_ico()])}, 415),
    "base64 garbage": ("post", "/embed", {"json": {"images": ["%%%not-base64%%%"]}}, 400),
    "data URI without base64": ("post", "/embed", {"json": {"images": ["data:image/png,abc"]}}, 400),
    "URL instead of bytes": ("post", "/embed", {"json": {"images": ["https://example.com/cat.jpg"]}}, 400),
    "images not a list": ("post", "/embed", {"json": {"images": 5}}, 422),
    "images of numbers": ("post", "/embed", {"json": {"images": [1, 2]}}, 422),
    "empty images list": ("post", "/embed", {"json": {"images": []}}, 422),
    "JSON array body": ("post", "/embed", {"json": ["a"]}, 422),
    "invalid JSON": ("post", "/embed", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    "wrong content type": ("post", "/embed", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
    "multipart without files": ("post", "/embed", {"data": {"normalize": "true"}, "files": {"other": ("a", b"x")}}, 400),
    "too many images": ("post", "/embed", {"files": files_field([_good()] * 17)}, 400),
    "k=0": ("post", "/knn", {"json": {"embedding": [0.1] * 192, "k": 0}}, 422),
    "k=10^9": ("post", "/knn", {"json": {"embedding": [0.1] * 192, "k": 10**9}}, 422),
    "k not a number": ("post", "/knn", {"files": {"file": ("a.jpg", _good())}, "data": {"k": "many"}}, 422),
    "unknown gallery": ("post", "/knn", {"json": {"embedding": [0.1] * 192, "gallery": "nope"}}, 404),
    "embedding of wrong size": ("post", "/knn", {"json": {"embedding": [0.1] * 7}}, 400),
    "image and embedding": ("post", "/knn", {"json": {"embedding": [0.1] * 192, "image": "aGk="}}, 422),
    "oversized body (Content-Length)": ("post", "/embed", {"files": files_field([b"\xff" * (3 * 1024 * 1024)])}, 413),
    "oversized body (streamed)": ("post", "/embed", {"content": _chunks(40), "headers": {"content-type": "application/json"}}, 413),
    "attention head out of range": ("post", "/attention", {"files": {"file": ("a.jpg", _good())}, "data": {"head": "7"}}, 422),
    "attention threshold > 1": ("post", "/attention", {"files": {"file": ("a.jpg", _good())}, "data": {"threshold": "1.5"}}, 422),
    "invalid gallery name": ("post", "/galleries/bad%20name!/items", {"json": {"vectors": [[0.0] * 192]}, "headers": KEY}, 400),
    "vectors of wrong size": ("post", "/galleries/v/items", {"json": {"vectors": [[0.0] * 5]}, "headers": KEY}, 400),
    "unknown route": ("get", "/nothing-here", {}, 404),
    "wrong method": ("get", "/embed", {}, 405),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_input_gets_a_4xx_with_a_message(client, case):
    method, path, kwargs, status = MALFORMED[case]
    kwargs = dict(kwargs)
    if callable(kwargs.get("content")) or (kwargs.get("content") is not None and not isinstance(kwargs["content"], bytes)):
        kwargs["content"] = _chunks(40)  # a fresh generator per run
    r = client.request(method.upper(), path, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] and len(err["message"]) > 10


def test_server_still_serves_after_the_malformed_inputs(client):
    assert client.post("/embed", files=files_field([_good()])).status_code == 200
    assert client.get("/healthz").status_code == 200
    text = client.get("/metrics").text
    assert 'status="500"' not in text
