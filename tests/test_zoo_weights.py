"""Downloads against a real HTTP server on 127.0.0.1, the offline mode, refusing unsafe pickles, and loading a
built-in name from a synthetic file in the authors' layout placed in the cache."""

import hashlib
import http.server
import os
import threading
import time
from dataclasses import replace

import pytest
import torch

import zoo
from zoo.backbones import build_encoder
from zoo.errors import ChecksumMismatchError, UnsafeCheckpointError, WeightsUnavailableError
from zoo.registry import rescan
from zoo.weights import converted_path, download, download_path, read_checkpoint

PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # a few chunks, so progress is reported more than once
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/missing":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        body = PAYLOAD[: len(PAYLOAD) // 2] if self.path == "/truncated" else PAYLOAD
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True  # /truncated: the server closes before Content-Length bytes were sent

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rescan()


def _cache_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_with_progress_and_matching_sha(server, tmp_path, capsys):
    dest = tmp_path / "c" / "w.pth"
    assert download(f"{server}/w.pth", dest, sha256=PAYLOAD_SHA) == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert _cache_files(dest.parent) == ["w.pth"]  # no temporary file left behind
    err = capsys.readouterr().err
    assert "w.pth" in err and "3.00M" in err  # tqdm's bar: file name and size in binary units


def test_sha_mismatch_keeps_nothing(server, tmp_path):
    dest = tmp_path / "c" / "w.pth"
    with pytest.raises(ChecksumMismatchError, match=f"has sha256 {PAYLOAD_SHA}, expected {'0' * 64}"):
        download(f"{server}/w.pth", dest, sha256="0" * 64, progress=False)
    assert _cache_files(dest.parent) == []


def test_interrupted_transfer_is_not_promoted(server, tmp_path):
    dest = tmp_path / "c" / "w.pth"
    with pytest.raises(WeightsUnavailableError, match="interrupted"):
        download(f"{server}/truncated", dest, progress=False)
    assert _cache_files(dest.parent) == []


def test_http_error_and_refused_connection_fail_fast(server, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="HTTP 404"):
        download(f"{server}/missing", tmp_path / "x", progress=False)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=f"place it at {tmp_path / 'y'}"):
        download("http://127.0.0.1:9/nothing-listens-here", tmp_path / "y", progress=False)
    assert time.monotonic() - start < 5


def test_offline_mode_uses_cache_only(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="offline mode"):
        download(f"{server}/w.pth", tmp_path / "w.pth", progress=False)
    s = zoo.spec("dino_vits16")
    with pytest.raises(WeightsUnavailableError) as e:
        zoo.load("dino_vits16")
    msg = str(e.value)
    assert s.sources[0].url in msg and str(download_path(s)) in msg and "offline" in msg


def test_registry_name_downloads_through_trust_on_first_use(server, tmp_path):
    # A spec whose weights live on the local server: the first download records the sha256 ...
    enc = build_encoder("resnet18_cifar", dataset="cifar10").eval()
    global PAYLOAD, PAYLOAD_SHA
    path = tmp_path / "moco.pth"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in enc.model.state_dict().items()}}, path)
    old = PAYLOAD, PAYLOAD_SHA
    PAYLOAD = path.read_bytes()
    PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
    try:
        base = zoo.spec("mocov2_resnet50")
        s = replace(base, name="test_tofu_moco", arch="resnet18_cifar", embed_dim=512,
                    preprocessing=enc.preprocessing,
                    sources=(replace(base.sources[0], url=f"{server}/moco.pth", sha256=None),))
        zoo.register(s, overwrite=True)
        loaded = zoo.load("test_tofu_moco", device="cpu")
        raw = download_path(s)
        assert raw.with_name(raw.name + ".sha256").read_text().split()[0] == PAYLOAD_SHA
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(loaded(x), enc(x))
        # ... and a later fetch of a changed file is refused.
        import shutil

        shutil.rmtree(converted_path(s))
        raw.write_bytes(PAYLOAD + b"x")
        with pytest.raises(ChecksumMismatchError, match="expected " + PAYLOAD_SHA):
            zoo.load("test_tofu_moco", device="cpu")
    finally:
        PAYLOAD, PAYLOAD_SHA = old


def test_builtin_name_without_network_fails_fast_naming_url_and_path(monkeypatch):
    # The built-in URL with its host pointed at a closed local port: what a machine without network sees.
    base = zoo.spec("dino_resnet50")
    s = replace(base, name="test_nonet", sources=(replace(base.sources[0], url="http://127.0.0.1:9/dino.pth"),))
    zoo.register(s, overwrite=True)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as e:
        zoo.load("test_nonet")
    assert time.monotonic() - start < 5
    assert "http://127.0.0.1:9/dino.pth" in str(e.value) and str(download_path(s)) in str(e.value)


def test_builtin_loads_from_a_synthetic_official_file_in_the_cache(tmp_path):
    """mocov3_vits16: the authors' wrapper and prefixes, 12 heads; converted once, then safetensors only."""
    src = build_encoder("vit_small", num_heads=12).eval()
    state = {f"module.base_encoder.{k}": v for k, v in src.model.state_dict().items()}
    state["module.base_encoder.head.0.weight"] = torch.empty(4096, 384)
    state["module.momentum_encoder.cls_token"] = torch.empty(1, 1, 384)
    state["module.predictor.0.weight"] = torch.empty(4096, 256)
    s = zoo.spec("mocov3_vits16")
    raw = download_path(s)
    raw.parent.mkdir(parents=True)
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": {}, "scaler": {}}, raw)
    enc = zoo.load("mocov3_vits16", device="cpu")
    assert enc.num_heads == 12 and enc.embed_dim == 384
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = src(x)
        assert torch.equal(enc(x), expected)
    cfg = zoo.read_config(converted_path(s))
    assert cfg["zoo"]["name"] == "mocov3_vits16" and cfg["zoo"]["source"]["url"] == s.sources[0].url
    assert cfg["zoo"]["source"]["sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()  # recorded (TOFU)
    raw.unlink()  # the next load needs only the converted folder
    with torch.no_grad():
        assert torch.equal(zoo.load("mocov3_vits16", device="cpu")(x), expected)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": _Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()
    # The same file placed as a built-in's download is refused before any conversion.
    s = zoo.spec("swav_resnet50")
    raw = download_path(s)
    raw.parent.mkdir(parents=True)
    raw.write_bytes(path.read_bytes())
    with pytest.raises(UnsafeCheckpointError):
        zoo.load("swav_resnet50")
    assert not marker.exists() and not converted_path(s).exists()


def test_paths_and_folders(tmp_path):
    with pytest.raises(zoo.ZooError, match="no model folder"):
        zoo.load(str(tmp_path / "nowhere" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(zoo.ZooError, match="not a model folder"):
        zoo.load(str(tmp_path / "empty"))
    with pytest.raises(zoo.ZooError, match="not a Hub reference"):
        zoo.load("hf://just-a-name")


def test_hf_repo_offline_says_what_is_missing(monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="org/missing-model"):
        zoo.load("hf://org/missing-model")


def test_hf_repo_loads_from_the_hub_cache_offline(tmp_path, monkeypatch):
    # huggingface_hub's cache layout, filled by hand: what an earlier online `zoo.load("hf://...")` leaves.
    enc = build_encoder("resnet18_cifar", dataset="cifar10").eval()
    commit = "0" * 40
    repo = tmp_path / "home" / "hub" / "models--org--tiny-simclr"
    zoo.save_encoder(enc, repo / "snapshots" / commit, zoo_meta={"name": "tiny", "method": "simclr"})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    x = torch.randn(2, 3, 32, 32)
    for ref in ("hf://org/tiny-simclr", "hf-hub:org/tiny-simclr"):
        loaded = zoo.load(ref, device="cpu")
        with torch.no_grad():
            assert torch.equal(loaded(x), enc(x))
