"""The web page in a real headless Chromium (Debian's `chromium`), driven over the DevTools protocol:
load the page, upload an image, wait for neighbours and the attention overlay, take a screenshot."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time

import httpx
import pytest
from PIL import Image
from service_testing import ROOT, ThreadServer, make_model_folder

from service.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")


class DevTools:
    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"page never satisfied {expression}; status: {self.js('document.body.innerText')}")


@pytest.fixture
def chromium(tmp_path):
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", "--window-size=1200,900",
         "about:blank"], stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://127.0.0.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        assert port, "chromium did not start its DevTools endpoint"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_page_shows_neighbours_and_attention(tmp_path, chromium):
    folder = make_model_folder("vit_tiny_p8", tmp_path / "model", name="vit_page")
    gallery = tmp_path / "gallery"
    for cls in sorted((ROOT / "service" / "default" / "gallery").iterdir()):
        if cls.is_dir():
            (gallery / cls.name).mkdir(parents=True)
            for f in sorted(cls.glob("*.jpg"))[:1]:
                shutil.copy(f, gallery / cls.name / f.name)
    upload = tmp_path / "query.jpg"
    shutil.copy(next((ROOT / "service" / "default" / "gallery" / "church").glob("*.jpg")), upload)
    settings = Settings(model=str(folder), data_dir=tmp_path / "data", default_gallery_dir=gallery)
    with ThreadServer(settings) as server:
        pages = httpx.get(f"http://127.0.0.1:{chromium}/json/list").json()
        page = next(p for p in pages if p["type"] == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        dt.call("Page.enable")
        dt.call("Page.navigate", url=server.url + "/")
        dt.wait_for("document.getElementById('gallery').options.length > 0")
        doc = dt.call("DOM.getDocument")
        node = dt.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")["nodeId"]
        dt.call("DOM.setFileInputFiles", nodeId=node, files=[str(upload)])
        dt.wait_for("document.getElementById('neighbors').dataset.count === '8'")
        dt.wait_for("document.getElementById('attention').naturalWidth > 0")
        labels = dt.js("[...document.querySelectorAll('.hit b')].map(b => b.textContent)")
        thumbs_loaded = dt.wait_for("[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)")
        shot = base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "page.png").write_bytes(shot)
    print(f"screenshot: {tmp_path / 'page.png'}")
    assert len(labels) == 8 and all(labels) and thumbs_loaded
    assert "church" in labels  # the uploaded image is itself in the gallery: its own label comes back
    assert Image.open(tmp_path / "page.png").size[0] >= 800
