"""examples/ipc_db_server --serve, driven by Debian's curl; shutdown on signals; restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CURL = "/usr/bin/curl"

needs_curl = pytest.mark.skipif(
    not os.access(CURL, os.X_OK), reason="needs Debian's curl (apt-get install curl)"
)


class Served:
    """A ``--serve`` subprocess; its stdout is drained by a thread so logging never blocks."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "examples.ipc_db_server", "--serve", "--port", "0",
             "--data-dir", str(data_dir), *extra],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.lines: list[str] = []
        self.url = ""
        for line in self.process.stdout:  # no sleeps: the URL line means "ready"
            self.lines.append(line)
            if line.startswith("serving on "):
                self.url = line.split()[-1]
                break
        assert self.url.startswith("http://127.0.0.1:"), "".join(self.lines)
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def stop(self, signum: int) -> tuple[int, str]:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=20)
        self._drain.join(10)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()


@contextmanager
def serving(data_dir: Path, *extra: str, signum: int = signal.SIGTERM) -> Iterator[Served]:
    served = Served(data_dir, *extra)
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.stop(signum)


def curl(*args: str) -> tuple[int, str]:
    """(HTTP status, body) from curl, never through a proxy."""
    result = subprocess.run(
        [CURL, "--silent", "--show-error", "--noproxy", "*", "--max-time", "10",
         "--output", "-", "--write-out", "\n%{http_code}", *args],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.decode("utf-8").rpartition("\n")
    return int(status), body


@needs_curl
def test_curl_writes_reads_and_gets_4xx_answers(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--access-log") as served:
        url = served.url
        assert curl("--data-binary", "hello", url + "write") == (200, "ok")
        assert curl("-d", "extrasafe", url + "write") == (200, "ok")  # form content type
        assert curl(url + "read") == (200, "hello\nextrasafe")
        assert curl(url + "nowhere")[0] == 404
        assert curl(url + "write")[0] == 405
        big = tmp_path / "big"
        big.write_bytes(b"x" * (200 * 1024))
        assert curl("--data-binary", f"@{big}", url + "write")[0] == 413
        bad = tmp_path / "bad"
        bad.write_bytes(b"\xff\xfe\xfd")
        assert curl("--data-binary", f"@{bad}", url + "write")[0] == 400
        assert curl("--data-urlencode", "message=<b>curl</b> & co", url + "submit")[0] == 303
        status, page = curl("--location", url)
        assert status == 200 and "&lt;b&gt;curl&lt;/b&gt; &amp; co" in page
        assert curl(url + "read") == (200, "hello\nextrasafe\n<b>curl</b> & co")
        code, stderr = served.stop(signal.SIGTERM)
    assert code == 0, stderr
    assert "stopped" in "".join(served.lines)
    assert "was denied" not in stderr
    assert "[WebServer] POST /write 200\n" in served.lines  # the access log, prefixed once


@needs_curl
def test_restart_with_the_same_data_dir_keeps_messages(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data) as first:
        assert curl("--data-binary", "kept", first.url + "write") == (200, "ok")
        code, stderr = first.stop(signal.SIGINT)  # Ctrl-C
    assert code == 0, stderr
    with serving(data) as second:
        assert curl(second.url + "read") == (200, "kept")


def test_serve_without_curl_answers_over_plain_sockets(tmp_path: Path) -> None:
    """The same path with the example's own client, so it runs where curl is missing."""
    from examples.ipc_db_server.client import http_request

    with serving(tmp_path / "data") as served:
        port = int(served.url.rstrip("/").rsplit(":", 1)[1])
        assert http_request("127.0.0.1", port, "POST", "/write", b"x")[::2] == (200, b"ok")
        code, _ = served.stop(signal.SIGTERM)
    assert code == 0



@pytest.mark.timeout(90)
def test_the_read_api_is_served_to_a_second_process(tmp_path: Path) -> None:
    from examples.ipc_db_server.client import http_request
    from examples.ipc_db_server.reader import READ_ONE_LINER

    socket_path = tmp_path / "read.sock"
    with serving(tmp_path / "data", "--read-socket", str(socket_path)) as served:
        deadline = time.monotonic() + 10
        while not any(line.startswith("read API") for line in served.lines):
            assert time.monotonic() < deadline, "".join(served.lines)
            time.sleep(0.01)
        assert f"on {socket_path}\n" in "".join(served.lines)
        for message in ("first", "second"):
            status = http_request("127.0.0.1", _port(served), "POST", "/write", message.encode())
            assert status[0] == 200
        read = subprocess.run(
            [sys.executable, "-c", READ_ONE_LINER, str(socket_path)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert read.stdout == "['second', 'first']\n"
        code, _ = served.stop(signal.SIGTERM)
    assert code == 0
    assert not socket_path.exists()


def test_a_read_socket_in_use_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    taken = tmp_path / "taken.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(taken))
        other.listen()
        done = subprocess.run(
            [sys.executable, "-m", "examples.ipc_db_server", "--serve", "--port", "0",
             "--data-dir", str(tmp_path / "data"), "--read-socket", str(taken)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"python -m examples.ipc_db_server: cannot serve the read API on {taken}: "
        "a server is listening there already"
    ]


def _port(served: Served) -> int:
    return int(served.url.rstrip("/").rsplit(":", 1)[1])


def test_the_request_log_is_off_by_default(tmp_path: Path) -> None:
    from examples.ipc_db_server.client import http_request

    with serving(tmp_path / "data") as served:
        for _ in range(20):
            assert http_request("127.0.0.1", _port(served), "POST", "/write", b"x")[0] == 200
        code, _ = served.stop(signal.SIGTERM)
    assert code == 0
    assert not [line for line in served.lines if "/write" in line]


def test_a_port_in_use_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "examples.ipc_db_server", "--serve", "--port", str(port),
             "--data-dir", str(tmp_path / "data")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stdout
