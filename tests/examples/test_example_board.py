"""examples/ipc_db_server: the board's compartments in-process: HTTP, seal, durability."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compartments import Proxy, compartment, control
from compartments.errors import CompartmentCrashed
from examples.ipc_db_server import lines
from examples.ipc_db_server.board import Board, start
from examples.ipc_db_server.client import http_request, parse_response
from examples.ipc_db_server.database import (
    DB_FILENAME,
    MAX_LATEST,
    Database,
    SQLiteDatabase,
    database_rules,
)
from examples.ipc_db_server.http11 import MAX_HEAD_BYTES, HttpError, Request, RequestReader
from examples.ipc_db_server.webserver import (
    PAGE_MESSAGES,
    WEB_SERVER_RULES,
    BoardApp,
    BoardWebServer,
    WebServer,
)

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


# -- test-only compartments: the real classes and the real rules, plus an exec hook ------


@compartment(rules=WEB_SERVER_RULES, name="InjectedWebServer")
class InjectedWebServer(BoardWebServer):
    def run(self, code: str) -> Any:
        namespace: dict[str, Any] = {"self": self}
        exec(code, namespace)
        return namespace.get("result")


@compartment(rules=database_rules, name="InjectedDatabase")
class InjectedDatabase(SQLiteDatabase):
    def run(self, code: str) -> Any:
        namespace: dict[str, Any] = {"self": self}
        exec(code, namespace)
        return namespace.get("result")


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    with Board(str(tmp_path)) as running:
        yield running


def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (malformed requests included) and parse the answer."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(data)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return parse_response(bytes(received))


def post(port: int, body: bytes, path: str = "/write", **headers: str) -> tuple[int, bytes]:
    status, _, answer = http_request(HOST, port, "POST", path, body, headers=headers)
    return status, answer


def get(port: int, path: str) -> tuple[int, bytes]:
    status, _, answer = http_request(HOST, port, "GET", path)
    return status, answer


# -- the demo ------------------------------------------------------------------------


def test_demo_exits_zero_and_names_compartments_and_privileges() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.ipc_db_server"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for name in ("Database", "WebServer", "WriteClient", "ReadClient"):
        assert f"[{name}" in out
    assert "POST /write 'hello' -> 'ok'" in out
    assert "GET /read -> 'hello\\nextrasafe': as expected" in out
    assert "SQLiteFiles: fcntl* fdatasync*" in out  # from the real policy
    assert "Networking: accept accept4" in out
    assert "connect" in out.split("[clients]")[1].split("denied")[0]
    assert "denied (EPERM): open openat socket connect" in out  # the Database
    assert "no compartment process left" in out
    assert "was denied" not in result.stderr  # normal operation needs nothing more


def test_show_policy_prints_a_table_per_compartment() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.ipc_db_server", "--show-policy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    sections = ("\n" + result.stdout).split("\n== ")[1:]
    assert [s.split(":")[0] for s in sections] == [
        "Database",
        "WebServer",
        "WriteClient/ReadClient",
    ]
    database, web, clients = sections
    assert "pwrite64" in database and "openat" not in database and "socket" not in database
    assert "accept4" in web and "socket " not in web and "openat" not in web
    assert "connect " in clients and "openat" not in clients


# -- HTTP ------------------------------------------------------------------------------


def test_write_then_read_returns_messages_in_order(board: Board) -> None:
    assert post(board.port, b"hello") == (200, b"ok")
    assert post(board.port, "extrasafe ✓".encode()) == (200, b"ok")
    assert get(board.port, "/read") == (200, "hello\nextrasafe ✓".encode())


def test_page_escapes_messages_and_has_a_form(board: Board) -> None:
    post(board.port, b'<script>alert(1)</script> & "q"')
    status, headers, page = http_request(HOST, board.port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot;" in page
    assert b"<script>" not in page
    assert b'<form method="post" action="/submit"' in page
    assert "default-src 'none'" in headers["content-security-policy"]


def test_form_post_stores_and_redirects_to_the_page(board: Board) -> None:
    status, headers, _ = http_request(
        HOST,
        board.port,
        "POST",
        "/submit",
        b"message=a%26b+%3Cc%3E%0D%0Anext+line+%E2%9C%93",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (status, headers["location"]) == (303, "/")
    assert get(board.port, "/read") == (200, "a&b <c>\\nnext line ✓".encode())


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /write HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"DELETE /read HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n\xff\xfe", 400),
        (b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 400),
        (b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n", 413),
        (b"POST /write HTTP/1.1\r\nHost: x\r\n\r\n", 411),
        (b"POST /write HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nmessage=x", 415),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\nX: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ],
)
def test_bad_requests_get_their_4xx_and_the_server_keeps_serving(
    board: Board, request_bytes: bytes, status: int
) -> None:
    assert raw(board.port, request_bytes)[0] == status
    assert post(board.port, b"still here") == (200, b"ok")
    assert get(board.port, "/read") == (200, b"still here")


def test_oversized_body_with_expect_continue_is_refused_before_upload(board: Board) -> None:
    head = (
        b"POST /write HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    assert raw(board.port, head)[0] == 413


def test_expect_continue_gets_100_then_the_answer(board: Board) -> None:
    with socket.create_connection((HOST, board.port), timeout=10) as sock:
        sock.sendall(
            b"POST /write HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"later")
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
    assert parse_response(bytes(answer))[::2] == (200, b"ok")


def test_an_idle_connection_does_not_block_other_clients(board: Board) -> None:
    with socket.create_connection((HOST, board.port), timeout=10) as idle:
        idle.sendall(b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert post(board.port, b"not blocked") == (200, b"ok")
    assert get(board.port, "/read") == (200, b"not blocked")


def test_head_answers_headers_only(board: Board) -> None:
    status, headers, body = raw(board.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_normal_traffic_triggers_no_denied_syscall(board: Board) -> None:
    for index in range(30):
        assert post(board.port, (f"message {index} " * 100).encode())[0] == 200
    assert get(board.port, "/")[0] == 200
    assert raw(board.port, b"GARBAGE\r\n\r\n")[0] == 400
    assert len(board.db.list()) == 30
    assert control(board.db).violations == [] and control(board.web).violations == []


# -- as a user sees it ------------------------------------------------------------------


def test_a_message_with_a_newline_stays_one_message_in_read(board: Board) -> None:
    assert post(board.port, b"two\nlines") == (200, b"ok")
    assert post(board.port, b"one") == (200, b"ok")
    status, body = get(board.port, "/read")
    assert status == 200 and body.count(b"\n") == 1
    assert lines.decode(body.decode()) == ["two\nlines", "one"]


def test_a_message_with_backslashes_and_returns_reads_back_exactly(board: Board) -> None:
    message = "C:\\new\\ \r\n\\n end\\"
    assert post(board.port, message.encode()) == (200, b"ok")
    assert lines.decode(get(board.port, "/read")[1].decode()) == [message]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1), max_size=8))
def test_the_read_format_gives_back_exactly_the_messages(messages: list[str]) -> None:
    body = lines.encode(messages)
    assert body.count("\n") == max(len(messages) - 1, 0)
    assert lines.decode(body) == messages


def test_the_empty_boards_placeholder_is_not_a_numbered_item(board: Board) -> None:
    page = get(board.port, "/")[1].decode()
    assert "no messages yet" in page
    assert "<li" not in page and "<ol" not in page


def test_the_page_shows_the_newest_message_first(board: Board) -> None:
    for message in (b"first", b"second", b"third"):
        post(board.port, message)
    page = get(board.port, "/")[1].decode()
    assert page.index("third") < page.index("second") < page.index("first")
    assert '<ol id="messages" reversed start="3">' in page  # numbered as written


class _ManyMessages:
    """A database of ``count`` messages, for the page's logic without 5000 commits."""

    def __init__(self, count: int) -> None:
        self.messages = [f"message {index}" for index in range(count)]

    def count(self) -> int:
        return len(self.messages)

    def latest(self, limit: int) -> list[str]:
        return self.messages[::-1][:limit]

    def list(self) -> list[str]:
        raise AssertionError("the page must not load every message")


def test_a_page_of_thousands_of_messages_shows_only_the_newest() -> None:
    app = BoardApp(_ManyMessages(5000))
    page = app.handle(Request("GET", "/", "HTTP/1.1", {})).body.decode()
    assert page.count("<li>") == PAGE_MESSAGES
    assert page.index("message 4999") < page.index(f"message {5000 - PAGE_MESSAGES}")
    assert "message 4899<" not in page
    assert f"the newest {PAGE_MESSAGES} of 5000 messages" in page
    assert page.index("<form") < page.index("<ol")  # the form never scrolls away


def test_the_database_returns_at_most_max_latest_newest_first(tmp_path: Path) -> None:
    db = SQLiteDatabase(str(tmp_path))
    for message in ("a", "b", "c"):
        db.write(message)
    assert db.latest(2) == ["c", "b"]
    assert db.latest(10**12) == ["c", "b", "a"]
    with pytest.raises(ValueError):
        db.latest(-1)
    assert MAX_LATEST >= PAGE_MESSAGES


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_parser_only_ever_raises_http_errors(chunks: list[bytes]) -> None:
    reader = RequestReader(max_body=1000)
    try:
        for chunk in chunks:
            if reader.feed(chunk) is not None:
                return
    except HttpError as error:
        assert 400 <= error.status < 600


# -- containment -----------------------------------------------------------------------


def test_injected_web_server_code_cannot_open_files_sockets_or_the_database(
    tmp_path: Path,
) -> None:
    with start(Database, str(tmp_path)) as db, start(InjectedWebServer, db) as web:
        db_path = str(tmp_path / DB_FILENAME)
        for snippet in (
            "open('/etc/passwd')",
            f"open({db_path!r}, 'rb')",
            f"open({db_path + '-wal'!r}, 'rb')",
            "import socket; socket.socket()",
            "import socket; socket.socket(socket.AF_UNIX)",
            "import os; os.listdir('/')",
            "import os; os.execv('/bin/true', ['true'])",
            "import os; os.fork()",
        ):
            with pytest.raises(PermissionError):
                web.run(snippet)
        # It still has what it needs: its listener and its direct line to the Database.
        assert web.run("self.app.db.write('from inside'); result = self.app.db.list()") == [
            "from inside"
        ]
        assert web.run("result = self.listener.getsockname()[0]") == HOST


def test_injected_database_code_cannot_connect_exec_or_open(tmp_path: Path) -> None:
    with socket.create_server((HOST, 0)) as bait, start(InjectedDatabase, str(tmp_path)) as db:
        port = bait.getsockname()[1]
        for snippet in (
            f"import socket; socket.socket().connect(({HOST!r}, {port}))",
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
            "import socket; socket.socketpair()",
            "import os; os.execv('/bin/true', ['true'])",
            "import os; os.fork()",
            "open('/etc/passwd')",
            f"open({str(tmp_path / 'new')!r}, 'w')",
            "import os; os.write(1, b'stdout is not ours')",
            "import fcntl; fcntl.fcntl(self.files['db'], fcntl.F_DUPFD, 0)",
            "import os; os.unlink(self.path)",
        ):
            with pytest.raises(PermissionError):
                db.run(snippet)
        db.write("still works")
        assert db.list() == ["still works"]


# -- durability ------------------------------------------------------------------------


def test_killing_the_web_server_mid_traffic_loses_no_acknowledged_write(
    tmp_path: Path,
) -> None:
    db = start(Database, str(tmp_path))
    web = start(WebServer, db)
    port = web.start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def writer(name: str) -> None:
        for index in range(10_000):
            message = f"{name}-{index}"
            try:
                status, _, body = http_request(HOST, port, "POST", "/write", message.encode())
            except OSError:  # refused, reset, or cut short: the server is gone
                return
            if (status, body) == (200, b"ok"):
                with lock:
                    acknowledged.append(message)
                    if len(acknowledged) >= 40:
                        enough.set()

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert enough.wait(30)
        assert control(web).pid is not None
        os.kill(control(web).pid, signal.SIGKILL)
        for thread in threads:
            thread.join(30)
        with pytest.raises(CompartmentCrashed):
            web.port()
        stored = db.list()
        assert set(acknowledged) <= set(stored)
        for name in ("w0", "w1", "w2", "w3"):  # each writer's messages in its order
            mine = [int(m.split("-")[1]) for m in stored if m.startswith(name + "-")]
            assert mine == sorted(mine)
        # A crashed database (no checkpoint, no close) loses nothing committed either.
        assert control(db).pid is not None
        os.kill(control(db).pid, signal.SIGKILL)
        with pytest.raises(CompartmentCrashed):
            db.list()
    finally:
        control(web).close()
        control(db).close()
    with start(Database, str(tmp_path)) as reopened:
        assert reopened.list() == stored


def test_restarted_database_reads_back_every_row(tmp_path: Path) -> None:
    with start(Database, str(tmp_path)) as db:
        for index in range(50):
            db.write(f"row {index}")
    with start(Database, str(tmp_path)) as again:
        assert again.list() == [f"row {index}" for index in range(50)]
        again.write("after restart")
        assert again.list()[-1] == "after restart"


def test_database_refuses_bad_input_from_its_callers(tmp_path: Path) -> None:
    with start(Database, str(tmp_path)) as db:
        with pytest.raises(TypeError):
            db.write(b"bytes")
        with pytest.raises(ValueError):
            db.write("x" * (64 * 1024 + 1))
        assert db.list() == []


def test_board_close_leaves_no_process(tmp_path: Path) -> None:
    board = Board(str(tmp_path))
    proxies: list[Proxy] = [board.db, board.web]
    pids = [control(p).pid for p in proxies]
    board.close()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
