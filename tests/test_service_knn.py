"""kNN retrieval end to end: a CIFAR-10 gallery built by `python -m service gallery build`, queried over HTTP.

The encoder is a randomly initialised resnet18_cifar at 16 px: its features carry colour and layout statistics,
which measured 23% top-1 by 10-NN majority on these 500/100 images (chance: 10%). The test asks for 17%.
"""

import numpy as np
import pytest
from PIL import Image
from service_testing import ThreadServer, cifar_sample, jpeg_bytes, make_model_folder, png_bytes

from service.__main__ import main as service_cli
from service.settings import Settings

GALLERY, QUERIES = 500, 100


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if cifar_sample("test", 1) is None:
        pytest.skip("CIFAR-10 is not in ../shared/data (or $ZOO_DATA_DIR): no kNN gallery to build")
    tmp = tmp_path_factory.mktemp("knn")
    folder = make_model_folder("resnet18_cifar", tmp / "model", image_size=16, dataset="cifar10")
    data = tmp / "data"
    service_cli(["gallery", "build", "cifar", "--from-data", "cifar10", "--limit", str(GALLERY),
                 "--model", str(folder), "--data-dir", str(data)])
    with ThreadServer(Settings(model=str(folder), data_dir=data, default_gallery_dir=None)) as s:
        yield s


def test_gallery_built_by_the_cli_is_served(server):
    import httpx

    g = httpx.get(server.url + "/galleries/cifar").json()
    assert g["count"] == GALLERY and g["labels"] == 10 and g["index"] == "flat"
    m = httpx.get(server.url + "/models").json()["models"][0]
    # A folder of weights alone is exported to ONNX once (here by `gallery build`, whose cache the server shares);
    # a CNN has no MatMul worth quantizing.
    assert m["runtime"] == "onnx" and m["precision"] == "fp32"
    assert "no model.onnx; using the export cached" in m["runtime_reason"] and "no MatMul" in m["runtime_reason"]


def test_knn_label_majority_is_well_above_chance(server):
    import httpx

    images, labels, classes = cifar_sample("test", QUERIES)
    correct = 0
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for img, label in zip(images, labels):
            r = client.post("/knn", files={"file": ("q.png", png_bytes(Image.fromarray(img)))},
                            data={"k": "10", "gallery": "cifar"})
            assert r.status_code == 200, r.text
            votes = [h["label"] for h in r.json()["neighbors"]]
            assert len(votes) == 10
            correct += max(set(votes), key=votes.count) == classes[int(label)]
    accuracy = correct / QUERIES
    assert accuracy >= 0.17, f"10-NN majority accuracy {accuracy:.2f} (chance 0.10)"


def test_knn_by_image_equals_brute_force_over_embed_results(server):
    import httpx

    images, _, _ = cifar_sample("train", 40)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        files = [("files", (f"{i}.jpg", jpeg_bytes(Image.fromarray(a)), "image/jpeg")) for i, a in enumerate(images)]
        vecs = np.asarray(client.post("/embed", files=files).json()["embeddings"])
        client.post("/galleries/exact/items", json={"vectors": vecs.tolist(), "labels": [str(i) for i in range(40)]})
        q = vecs[7] + 0.01 * vecs[3]
        hits = client.post("/knn", json={"embedding": q.tolist(), "k": 5, "gallery": "exact"}).json()["neighbors"]
    want = np.argsort(-(vecs @ (q / np.linalg.norm(q))))[:5]
    assert [h["label"] for h in hits] == [str(i) for i in want]


def test_attention_on_a_resnet_is_refused(server):
    import httpx

    r = httpx.post(server.url + "/attention", files={"file": ("a.jpg", jpeg_bytes(Image.new("RGB", (32, 32))))})
    assert r.status_code == 400 and "ViT" in r.json()["error"]["message"]
