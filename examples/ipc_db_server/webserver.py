"""The WebServer compartment: binds 127.0.0.1 before the seal, then only talks on sockets.

Threading: the compartment's main thread serves RPC calls (``start``, ``port``,
``close``) one at a time, so the HTTP loop runs in a second thread. That thread is
created in ``__init__``, i.e. *before* the seal, and parked on a gate; ``start()``, the
first call the parent makes once the constructor has returned (which means: sealed),
opens the gate. So the process never handles a byte of HTTP unsealed, and its policy
needs no ``clone`` at all (``Threads.allow_create()`` would be required to start the
thread after the seal). ``close()`` writes to a pipe created before the seal; the loop
sees it, closes every socket and returns, and ``close()`` joins it.

The HTTP loop is a single-threaded ``poll()`` loop over non-blocking sockets, so one slow
or idle client (browsers open speculative connections) never stalls the others; every
connection has a deadline. A database call blocks the loop for its duration (one commit).
"""

from __future__ import annotations

import html
import os
import select
import socket
import threading
import time
import urllib.parse
from typing import Any

from compartments import compartment
from compartments.rulesets import Networking, Time

from . import lines
from .http11 import CONTINUE, HttpError, Request, RequestReader, Response

__all__ = [
    "DEFAULT_MAX_BODY",
    "PAGE_MESSAGES",
    "WEB_SERVER_RULES",
    "BoardApp",
    "BoardWebServer",
    "WebServer",
]

#: What the sealed web server may do: accept/recv/send/poll/close on sockets it already
#: has (Networking's "running servers" set, which includes read/write on any fd it holds:
#: stdout for the access log, the stop pipe), and read the clock for deadlines.
WEB_SERVER_RULES = [
    Networking.nothing().allow_running_tcp_servers(),
    Time.nothing().allow_gettime(),
]

DEFAULT_MAX_BODY = 64 * 1024
#: Messages on the HTML page, newest first; ``/read`` has every one.
PAGE_MESSAGES = 100
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0  # seconds from accept to a complete request
WRITE_TIMEOUT = 10.0
LINGER_TIME = 1.0  # draining unread input before close, so the client sees our answer
LINGER_BYTES = 1024 * 1024
_RECV = 64 * 1024

_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("GET", "HEAD"),
    "/read": ("GET", "HEAD"),
    "/write": ("POST",),
    "/submit": ("POST",),
}


class BoardApp:
    """Routes requests to the database; no sockets here, so it is easy to test."""

    def __init__(self, db: Any, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.db = db
        self.max_body = max_body

    def handle(self, request: Request) -> Response:
        allowed = _ROUTES.get(request.path)
        if allowed is None:
            raise HttpError(404, f"no such page: {request.path}")
        if request.method not in allowed:
            raise HttpError(405, "method not allowed", {"Allow": ", ".join(allowed)})
        if request.path == "/write":
            self.db.write(_message(_utf8(request.body)))
            return Response.text(200, "ok")
        if request.path == "/submit":
            return self._submit(request)
        if request.path == "/read":
            return Response.text(200, lines.encode(self.db.list()))
        return self._page()

    def _submit(self, request: Request) -> Response:
        """The HTML form's target: store, then send the browser back to the page."""
        kind = (request.header("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise HttpError(415, "the form posts application/x-www-form-urlencoded")
        try:
            fields = urllib.parse.parse_qs(
                _utf8(request.body),
                keep_blank_values=True,
                strict_parsing=False,
                encoding="utf-8",
                errors="strict",
                max_num_fields=8,
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, f"malformed form data: {exc}") from None
        values = fields.get("message", [])
        if len(values) != 1:
            raise HttpError(400, "the form has one field, message")
        # Browsers send a textarea's line breaks as CRLF.
        self.db.write(_message(values[0].replace("\r\n", "\n")))
        return Response.text(303, "stored; see /\n", {"Location": "/"})

    def _page(self) -> Response:
        """The newest :data:`PAGE_MESSAGES` messages, newest first, numbered as written
        (1 is the first message ever); the form comes first, so it never scrolls away."""
        total = self.db.count()
        newest = self.db.latest(PAGE_MESSAGES)
        if not newest:
            board = '  <p id="empty"><em>no messages yet</em></p>'
        else:
            items = "\n".join(
                f"    <li>{html.escape(message, quote=True)}</li>" for message in newest
            )
            board = f'  <ol id="messages" reversed start="{total}">\n{items}\n  </ol>'
            if total > len(newest):
                board += (
                    f'\n  <p id="older">the newest {len(newest)} of {total} messages; '
                    'all of them, oldest first, at <a href="/read">/read</a></p>'
                )
        page = _PAGE.format(board=board)
        headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": _CSP}
        return Response(200, page.encode("utf-8"), headers)


_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>compartments message board</title>
  <style>body {{ font-family: sans-serif; max-width: 40em; margin: 2em auto; }}
  li {{ white-space: pre-wrap; }}</style>
</head>
<body>
  <h1>Message board</h1>
  <form method="post" action="/submit" accept-charset="utf-8">
    <label for="message">New message</label><br>
    <textarea id="message" name="message" rows="3" cols="50" required></textarea><br>
    <button type="submit">Post</button>
  </form>
{board}
</body>
</html>
"""


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "the body is not valid UTF-8") from None


def _message(text: str) -> str:
    if not text.strip():
        raise HttpError(400, "empty message")
    return text


# -- the socket side --------------------------------------------------------------------


class _Connection:
    """One client: read a request, write one answer, drain, close."""

    def __init__(self, sock: socket.socket, max_body: int) -> None:
        self.sock = sock
        self.reader = RequestReader(max_body)
        self.out = bytearray()
        self.reading = True  # still collecting the request
        self.draining = False  # answered; discarding input until EOF before close
        self.drained = 0
        self.deadline = time.monotonic() + REQUEST_TIMEOUT
        self.log = ""

    def answer(self, data: bytes, log: str) -> None:
        self.out += data
        self.reading = False
        self.deadline = time.monotonic() + WRITE_TIMEOUT
        self.log = log

    def events(self) -> int:
        wanted = select.POLLIN if (self.reading or self.draining) else 0
        return wanted | (select.POLLOUT if self.out else 0)


class BoardWebServer:
    """The logic; :class:`WebServer` is this class, sealed. ``db`` is the Database."""

    def __init__(
        self,
        db: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body: int = DEFAULT_MAX_BODY,
        access_log: bool = False,
    ) -> None:
        self.app = BoardApp(db, max_body)
        self.max_body = max_body
        self.access_log = access_log
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self._stop_r, self._stop_w = os.pipe()
        self._gate = threading.Event()
        self._stopping = False
        self.served = 0
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()  # parked on the gate until start(): after the seal

    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def start(self) -> int:
        """Begin serving (the constructor returned, so we are sealed); returns the port."""
        self._gate.set()
        return self.port()

    def requests_served(self) -> int:
        return self.served

    def close(self) -> None:
        """Stop the HTTP loop, close every socket, and wait for the thread to end."""
        if not self._stopping:
            self._stopping = True
            os.write(self._stop_w, b"x")
            self._gate.set()
            self._thread.join()
            self.listener.close()
            os.close(self._stop_r)
            os.close(self._stop_w)

    # -- the loop (runs in the http thread) ---------------------------------------------

    def _run(self) -> None:
        self._gate.wait()
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        listening = self.listener.fileno()
        poller.register(listening, select.POLLIN)
        connections: dict[int, _Connection] = {}
        try:
            while not self._stopping:
                for fd, events in poller.poll(_poll_timeout(connections)):
                    if fd == self._stop_r:
                        return
                    if fd == listening:
                        self._accept(poller, connections)
                    elif fd in connections:
                        self._service(poller, connections, connections[fd], events)
                self._expire(poller, connections)
                if len(connections) < MAX_CONNECTIONS:
                    poller.register(listening, select.POLLIN)  # re-arms after a full house
        finally:
            for connection in connections.values():
                connection.sock.close()

    def _accept(self, poller: select.poll, connections: dict[int, _Connection]) -> None:
        while len(connections) < MAX_CONNECTIONS:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the client reset before we accepted, or out of fds
                return
            sock.setblocking(False)
            connection = _Connection(sock, self.max_body)
            connections[sock.fileno()] = connection
            poller.register(sock.fileno(), connection.events())
        poller.unregister(self.listener.fileno())  # full: leave the rest in the backlog

    def _service(
        self,
        poller: select.poll,
        connections: dict[int, _Connection],
        connection: _Connection,
        events: int,
    ) -> None:
        try:
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._receive(connection)
            if connection.out and events & select.POLLOUT:
                self._send(connection)
        except OSError:
            self._close(poller, connections, connection)
            return
        if not connection.reading and not connection.out and not connection.draining:
            self._close(poller, connections, connection)
            return
        poller.modify(connection.sock.fileno(), connection.events())

    def _receive(self, connection: _Connection) -> None:
        data = connection.sock.recv(_RECV)
        if connection.draining:
            connection.drained += len(data)
            if not data or connection.drained > LINGER_BYTES:
                connection.draining = False  # done: the caller closes
            return
        if not connection.reading:
            return  # answering; later input is read only when draining
        if not data:
            connection.reading = False  # the client gave up before a whole request
            return
        try:
            request = connection.reader.feed(data)
        except HttpError as error:
            connection.answer(error.response().encode(), f"- - {error.status}")
            return
        if connection.reader.wants_continue:
            connection.out += CONTINUE
            connection.reader.wants_continue = False
        if request is not None:
            response = self._respond(request)
            head_only = request.method == "HEAD"
            connection.answer(
                response.encode(head_only=head_only),
                f"{request.method} {request.path} {response.status}",
            )

    def _respond(self, request: Request) -> Response:
        try:
            return self.app.handle(request)
        except HttpError as error:
            return error.response()
        except Exception as exc:  # the database is gone or refused: keep serving
            return Response.text(503, f"database unavailable: {type(exc).__name__}\n")

    def _send(self, connection: _Connection) -> None:
        sent = connection.sock.send(connection.out)
        del connection.out[:sent]
        if not connection.out and not connection.reading:
            self.served += 1
            if self.access_log:  # the parent prefixes each line with `[WebServer] `
                print(connection.log, flush=True)
            # Half-close, then read what the client still sends until it closes: closing
            # with unread input would reset the connection and could lose our answer.
            connection.sock.shutdown(socket.SHUT_WR)
            connection.draining = True
            connection.deadline = time.monotonic() + LINGER_TIME

    def _expire(self, poller: select.poll, connections: dict[int, _Connection]) -> None:
        now = time.monotonic()
        for connection in [c for c in connections.values() if c.deadline <= now]:
            if connection.reading:
                timeout = HttpError(408, "request not received in time").response()
                connection.answer(timeout.encode(), "- - 408")
                connection.deadline = now + WRITE_TIMEOUT
                poller.modify(connection.sock.fileno(), connection.events())
            else:
                self._close(poller, connections, connection)

    @staticmethod
    def _close(
        poller: select.poll, connections: dict[int, _Connection], connection: _Connection
    ) -> None:
        fd = connection.sock.fileno()
        poller.unregister(fd)
        del connections[fd]
        connection.sock.close()


def _poll_timeout(connections: dict[int, _Connection]) -> int | None:
    if not connections:
        return None
    earliest = min(c.deadline for c in connections.values())
    return max(0, int((earliest - time.monotonic()) * 1000) + 1)


@compartment(rules=WEB_SERVER_RULES, name="WebServer")
class WebServer(BoardWebServer):
    """HTTP on 127.0.0.1: accepts, receives and sends on its own sockets, nothing else."""
