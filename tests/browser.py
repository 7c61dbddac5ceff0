"""Headless Chromium over the DevTools protocol: render a page, collect errors, screenshot.

A small stdlib websocket client (no extra dependency). ``check_page`` skips the calling test
where no Chromium binary exists.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Cdp:
    """A minimal DevTools-protocol client over one websocket (RFC 6455, client side)."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", ws_url)
        assert m, ws_url
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, "DevTools closed the connection during the handshake"
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status, status
        self.buf = head.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the websocket")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, payload: bytes, opcode: int = 1) -> None:
        # Client frames must be masked (RFC 6455 section 5.3).
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _message(self) -> dict[str, Any]:
        data = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else b""
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 9:  # ping
                self._send(payload, opcode=10)
                continue
            if opcode == 8:
                raise ConnectionError("DevTools closed the websocket")
            data += payload
            if b0 & 0x80:  # FIN: the message is complete
                return json.loads(data)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Return the result of one command; events that arrive meanwhile are kept."""
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                assert "error" not in msg, (method, msg["error"])
                return msg["result"]
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, deadline: float) -> None:
        """Wait until the event ``method`` has arrived (or fail at ``deadline``)."""
        while not any(e["method"] == method for e in self.events):
            assert time.monotonic() < deadline, f"timed out waiting for {method}"
            msg = self._message()
            if "method" in msg:
                self.events.append(msg)
            # A dialog blocks the page until answered: only a script that ran can open one.
            assert msg.get("method") != "Page.javascriptDialogOpening", (
                f"the page opened a dialog, so a script ran: {msg['params']}"
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def _browser(binary: str, profile: Path) -> Iterator[int]:
    """Yield the DevTools port of a headless Chromium started here, and stop it after."""
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1280,1600",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so its helpers stop with it
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium wrote no DevToolsActivePort in 20 s"
            time.sleep(0.1)
        yield int(port_file.read_text().split()[0])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _page_ws_url(port: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/json/list")
        targets = json.loads(conn.getresponse().read())
        conn.close()
        pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        assert time.monotonic() < deadline, f"no page target: {targets}"
        time.sleep(0.1)


_CHECK_IMAGES = """
(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return {
    count: imgs.length,
    sizes: imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]),
    allRendered: imgs.every(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0),
    height: document.documentElement.scrollHeight,
  };
})()
"""


def check_page(
    html_path: Path, screenshot: Path, tmp_path: Path
) -> tuple[dict[str, Any], list[Any]]:
    """Open ``html_path`` in headless Chromium; returns the image state and the page's errors.

    Saves a full-page screenshot to ``screenshot``. Skips the test where no Chromium exists.
    """
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium binary on PATH (Debian: apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    with _browser(binary, profile) as port:
        cdp = _Cdp(_page_ws_url(port), timeout=20)
        try:
            for domain in ("Page", "Runtime", "Log"):
                cdp.call(f"{domain}.enable")
            cdp.events.clear()
            cdp.call("Page.navigate", url=html_path.resolve().as_uri())
            cdp.wait_event("Page.loadEventFired", time.monotonic() + 20)
            result = cdp.call(
                "Runtime.evaluate", expression=_CHECK_IMAGES, awaitPromise=True, returnByValue=True
            )
            state = result["result"]["value"]
            shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            # Events that arrived after the screenshot count too.
            cdp.call("Runtime.evaluate", expression="1")
        finally:
            cdp.close()
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    errors = [
        e
        for e in cdp.events
        if e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
    ]
    return state, errors
