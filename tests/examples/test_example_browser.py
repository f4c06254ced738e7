"""examples/ipc_db_server in a real browser: headless Chromium loads the page, a real form
submission is driven through the Chrome DevTools protocol (a stdlib websocket client),
and the new message shows up, escaped."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import urllib.parse
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compartments import control
from examples.ipc_db_server.board import Board
from examples.ipc_db_server.client import http_request

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="needs Debian's chromium (apt-get install --no-install-recommends chromium)",
)
MESSAGE = "héllo <img src=x onerror=\"document.title='pwned'\"> & \"co\" ✓"


class DevTools:
    """Just enough of a websocket client (RFC 6455) to speak CDP to one page."""

    def __init__(self, ws_url: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(ws_url)
        assert parts.hostname is not None and parts.port is not None
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "DevTools closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self._ids = 0
        self.events: deque[dict[str, Any]] = deque()

    def _send_frame(self, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _exactly(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, "DevTools closed the connection"
            data += chunk
        return bytes(data)

    def _receive(self) -> dict[str, Any]:
        message = bytearray()
        while True:
            first, second = self._exactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", self._exactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", self._exactly(8))
            payload = self._exactly(size)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode in (0x9, 0xA):  # ping/pong: not used by Chromium here
                continue
            message += payload
            if first & 0x80:
                result: dict[str, Any] = json.loads(message)
                return result

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._ids += 1
        self._send_frame(json.dumps({"id": self._ids, "method": method, "params": params}).encode())
        while True:
            message = self._receive()
            if message.get("id") == self._ids:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    def wait_for(self, event: str) -> dict[str, Any]:
        while self.events:
            message = self.events.popleft()
            if message.get("method") == event:
                return message
        while True:
            message = self._receive()
            if message.get("method") == event:
                return message

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[int]:
    """A headless Chromium on about:blank; yields its DevTools port."""
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-proxy-server", f"--user-data-dir={tmp_path / 'profile'}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: we stop all of it at the end
    )  # fmt: skip
    try:
        assert process.stderr is not None
        port = 0
        seen = []
        for line in process.stderr:  # ready once it prints where DevTools listens
            seen.append(line)
            if line.startswith("DevTools listening on ws://"):
                port = urllib.parse.urlsplit(line.split()[-1]).port or 0
                break
        assert port, "Chromium did not start DevTools:\n" + "".join(seen[-20:])
        process.stderr.close()  # nothing reads it any more; never let it block Chromium
        yield port
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def page_target(devtools_port: int) -> str:
    status, _, body = http_request("127.0.0.1", devtools_port, "GET", "/json/list")
    assert status == 200, body
    pages = [t for t in json.loads(body) if t["type"] == "page"]
    assert pages, body
    return str(pages[0]["webSocketDebuggerUrl"])


def test_browser_posts_the_form_and_sees_the_message_escaped(
    tmp_path: Path, chromium: int
) -> None:
    with Board(str(tmp_path / "data")) as board:
        board.db.write("first")
        page = DevTools(page_target(chromium))
        try:
            page.call("Page.enable")
            page.call("Page.navigate", url=board.url)
            page.wait_for("Page.loadEventFired")
            items = "[...document.querySelectorAll('#messages li')].map(li => li.textContent)"
            assert page.evaluate(items) == ["first"]

            # A real submission: fill the textarea, submit the form (POST /submit, 303,
            # GET /), exactly as a click would.
            page.evaluate(
                f"document.getElementById('message').value = {json.dumps(MESSAGE)};"
                "document.querySelector('form').requestSubmit(); true"
            )
            page.wait_for("Page.loadEventFired")
            assert page.evaluate("location.pathname") == "/"
            assert page.evaluate(items) == [MESSAGE, "first"]  # newest first
            # Shown as text: no element was injected and no handler ran.
            assert page.evaluate("document.querySelectorAll('#messages img').length") == 0
            assert page.evaluate("document.title") == "compartments message board"
        finally:
            page.close()
        assert board.db.list() == ["first", MESSAGE]
        assert control(board.web).violations == []
