"""An acknowledged gallery insert survives a SIGKILL of the real server process; start-up errors are clear."""

import os
import signal
import subprocess
import sys

import httpx
from service_testing import ROOT, jpeg_bytes, make_model_folder, start_subprocess_server, synthetic_images

import zoo


def test_acknowledged_inserts_survive_sigkill_and_restart(tmp_path):
    folder = make_model_folder("resnet18_cifar", tmp_path / "model", image_size=16)
    cfg = zoo.read_config(folder)
    assert cfg["zoo"]["arch"] == "resnet18_cifar"
    args = ["--model", str(folder), "--data-dir", str(tmp_path / "data"), "--runtime", "torch",
            "--no-default-gallery", "--api-key", "k"]
    proc, url = start_subprocess_server(args, log_path=tmp_path / "server.log")
    acknowledged = []
    try:
        images = [jpeg_bytes(im) for im in synthetic_images(12, size=32)]
        for start in range(0, 12, 3):
            files = [("files", (f"{i}.jpg", images[i], "image/jpeg")) for i in range(start, start + 3)]
            r = httpx.post(url + "/galleries/kept/items", files=files, headers={"X-API-Key": "k"},
                           data={"labels": [str(i) for i in range(start, start + 3)]}, timeout=60)
            assert r.status_code == 200, r.text
            acknowledged += r.json()["ids"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown hook runs: the index file is never written
        proc.wait(timeout=30)
    proc, url = start_subprocess_server(args, log_path=tmp_path / "server.log")
    try:
        g = httpx.get(url + "/galleries/kept").json()
        assert g["count"] == 12
        hits = httpx.post(url + "/knn", json={"embedding": [1.0] * g["dim"], "k": 12, "gallery": "kept"}).json()
        assert sorted(h["id"] for h in hits["neighbors"]) == sorted(acknowledged)
        r = httpx.post(url + "/knn", files={"file": ("q.jpg", images[5])}, data={"gallery": "kept", "k": "1"})
        assert r.json()["neighbors"][0]["id"] == acknowledged[5]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_missing_default_model_is_explained(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ZOO_DEFAULT_MODEL_DIR": str(tmp_path / "no-model")}
    r = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "default model is missing" in r.stderr and "--model" in r.stderr


def test_a_folder_that_is_not_a_model_is_explained(tmp_path):
    r = subprocess.run([sys.executable, "-m", "service", "--model", str(tmp_path)], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not a model folder" in r.stderr
