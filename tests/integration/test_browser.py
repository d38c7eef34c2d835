"""aifixer_sandbox.browser: headless Chromium against a page on loopback behind basic auth.

The page fills itself in from script: after a timer, an XHR to the same origin (behind
the same login) brings the rows and turns the page green. Seeing the rows in the DOM
and the green in the PNG shows that scripts, timers and authenticated XHR ran before
the capture.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from aifixer_sandbox import browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

USER, PASSWORD = "ops", "p@ss word/1"  # characters a URL must quote
ROWS = ["aifixer.tasks.diagnose", "aifixer.tasks.finalize"]
PAGE = """<!doctype html>
<html><head><title>rows</title>
<style>body { margin: 0; background: #fff; } body.loaded { background: #00c000; }</style>
</head><body><ul id="rows"></ul>
<script>
setTimeout(function () {
  var xhr = new XMLHttpRequest();
  xhr.open("GET", "/rows");
  xhr.onload = function () {
    if (xhr.status !== 200) { document.title = "status " + xhr.status; return; }
    JSON.parse(xhr.responseText).forEach(function (name) {
      var li = document.createElement("li");
      li.textContent = name;
      document.getElementById("rows").appendChild(li);
    });
    document.body.className = "loaded";
  };
  xhr.send();
}, 1500);
</script></body></html>
"""


@pytest.fixture
def site() -> Iterator[tuple[str, list[str]]]:
    """(base URL, paths requested with the right credentials) of a page behind basic auth."""
    good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.headers.get("Authorization") != good:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.end_headers()
                self.wfile.write(b"login required")
                return
            served.append(self.path)
            if self.path == "/":
                body, kind = PAGE.encode(), "text/html"
            elif self.path == "/rows":
                body, kind = json.dumps(ROWS).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()


def test_dom_after_scripts_and_authenticated_xhr(needs_chromium, site):
    url, served = site
    dom = browser.dump_dom(url, wait_ms=5000, auth=(USER, PASSWORD))
    assert all(f"<li>{name}</li>" in dom for name in ROWS), dom[-2000:]
    assert served[0] == "/" and "/rows" in served  # the page and its XHR, both logged in


def test_without_credentials_nothing_is_shown(needs_chromium, site):
    url, served = site
    dom = browser.dump_dom(url, wait_ms=2000)
    assert "<li>" not in dom  # (headless Chromium renders a 401 as an empty page)
    assert served == []


def test_screenshot_is_the_rendered_page(needs_chromium, site, tmp_path):
    url, _ = site
    out = browser.screenshot(
        url, tmp_path / "shots" / "page.png", width=640, height=360, wait_ms=5000,
        auth=(USER, PASSWORD),
    )  # fmt: skip
    assert out == (tmp_path / "shots" / "page.png").resolve()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (640, 360)
        r, g, b = img.convert("RGB").getpixel((600, 300))
    assert (r, g, b) == (0, 192, 0)  # green: the XHR answered before the capture


def test_a_local_file(needs_chromium, tmp_path):
    page = tmp_path / "report.html"
    page.write_text("<html><body><p id=x></p><script>x.textContent = 6 * 7</script></body></html>")
    assert '<p id="x">42</p>' in browser.dump_dom(page.as_uri(), wait_ms=500)


def test_only_loopback_is_opened():
    for url in ("http://example.com/", "http://10.0.0.1:5555/", "ftp://127.0.0.1/", "tasks"):
        with pytest.raises(browser.BrowserError, match="only loopback"):
            browser.dump_dom(url)


def test_no_chromium_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(browser.BrowserError, match=r"apt-get install -y chromium"):
        browser.chromium()


def test_errors_never_show_the_password(tmp_path, monkeypatch):
    # A "browser" that fails, echoing its command line to stderr as a crash might.
    fake = tmp_path / "bin" / "chromium"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "crashed on $*" >&2\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setattr(browser, "DEBIAN_BINARY", tmp_path / "absent")
    with pytest.raises(browser.BrowserError) as err:
        browser.dump_dom("http://127.0.0.1:9/", auth=(USER, PASSWORD))
    message = str(err.value)
    assert "exited with 3" in message and "crashed on" in message
    assert PASSWORD not in message and "p%40ss" not in message
    assert shutil.which("chromium") == str(fake)
