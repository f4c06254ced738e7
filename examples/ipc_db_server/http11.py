"""A minimal, strict HTTP/1.1 request parser and response writer (RFC 9112 subset).

Pure code, no I/O: :class:`RequestReader` is fed bytes as they arrive and yields one
:class:`Request` or raises :class:`HttpError` with the status to answer. Everything is
bounded: the head (request line + headers) by ``MAX_HEAD_BYTES``, the number of headers,
the target length, and the body by the ``max_body`` given. Every connection carries one
request (``Connection: close``), so there is no pipelining or keep-alive state to get
wrong. Bodies need Content-Length: chunked uploads are refused with 411.

http.server is not used: it imports and opens files lazily (mimetypes, email parsing)
and needs more syscalls than a sealed process should have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "MAX_HEAD_BYTES",
    "HttpError",
    "Request",
    "RequestReader",
    "Response",
]

MAX_HEAD_BYTES = 8 * 1024
MAX_HEADERS = 64
MAX_TARGET = 2048
_CONTENT_LENGTH_DIGITS = 12

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")  # origin-form: printable ASCII, no spaces
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB

REASONS = {
    100: "Continue",
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpError(Exception):
    """A request we refuse, with the status to answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        return Response.text(self.status, self.message + "\n", headers=self.headers)


@dataclass
class Request:
    method: str
    target: str
    version: str
    #: lower-cased name -> values, in order of appearance
    headers: dict[str, list[str]]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str, headers: dict[str, str] | None = None) -> Response:
        merged = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        return cls(status, text.encode("utf-8"), merged)

    def encode(self, *, head_only: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}"]
        headers = {
            **self.headers,
            "Content-Length": str(len(self.body)),
            "Connection": "close",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


class RequestReader:
    """Collects one request from the bytes of a connection."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._buffer = bytearray()
        self._head: Request | None = None
        self._length = 0
        #: True once the client asked for ``100 Continue`` and should get it now
        self.wants_continue = False

    def feed(self, data: bytes) -> Request | None:
        """The complete request, or None while more bytes are needed."""
        self._buffer += data
        if self._head is None:
            self._skip_leading_blank_lines()
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                self._check_partial_head()
                return None
            head = bytes(self._buffer[:end])
            if len(head) > MAX_HEAD_BYTES:
                raise HttpError(431, "request head too large")
            del self._buffer[: end + 4]
            self._head = parse_head(head)
            self._length = body_length(self._head, self.max_body)
            self.wants_continue = _wants_continue(self._head, self._length, len(self._buffer))
        if len(self._buffer) < self._length:
            return None
        # Connection: close semantics: bytes after the body (a pipelined request) are
        # ignored, never parsed as another request.
        self._head.body = bytes(self._buffer[: self._length])
        self.wants_continue = False
        return self._head

    def _skip_leading_blank_lines(self) -> None:
        while self._buffer.startswith(b"\r\n"):
            del self._buffer[:2]

    def _check_partial_head(self) -> None:
        if len(self._buffer) <= MAX_HEAD_BYTES:
            first_line_end = self._buffer.find(b"\r\n")
            if first_line_end < 0 and len(self._buffer) > MAX_TARGET + 64:
                raise HttpError(414, "request line too long")
            return
        if self._buffer.find(b"\r\n") < 0:
            raise HttpError(414, "request line too long")
        raise HttpError(431, "request head too large")


def parse_head(head: bytes) -> Request:
    """Request line and header fields; raises HttpError on anything malformed."""
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise HttpError(400, "bare CR or LF in the request head")
    method, target, version = _request_line(lines[0])
    headers: dict[str, list[str]] = {}
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete header line folding")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header field")
        value = value.strip(b" \t")
        if _BAD_VALUE_CHAR.search(value):
            raise HttpError(400, "control character in a header value")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
    request = Request(method, target, version, headers)
    if version == "HTTP/1.1" and len(headers.get("host", [])) != 1:
        raise HttpError(400, "HTTP/1.1 needs exactly one Host header")
    return request


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "malformed method")
    if len(target) > MAX_TARGET:
        raise HttpError(414, "request target too long")
    if not _TARGET.fullmatch(target):
        raise HttpError(400, "malformed request target")
    matched = _VERSION.fullmatch(version)
    if matched is None:
        raise HttpError(400, "malformed HTTP version")
    if matched.group(1) != b"1":
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
    text_version = "HTTP/1.1" if matched.group(2) != b"0" else "HTTP/1.0"
    return method.decode("ascii"), target.decode("ascii"), text_version


def body_length(request: Request, max_body: int) -> int:
    """Content-Length, checked; chunked bodies are refused (411)."""
    if "transfer-encoding" in request.headers:
        if "content-length" in request.headers:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        raise HttpError(411, "send the body with a Content-Length")
    values = request.headers.get("content-length")
    if values is None:
        if request.method in ("POST", "PUT", "PATCH"):
            raise HttpError(411, "a body needs a Content-Length")
        return 0
    texts = {v.strip() for value in values for v in value.split(",")}
    if len(texts) != 1:
        raise HttpError(400, "conflicting Content-Length values")
    (text,) = texts
    if not text.isdigit() or not text.isascii() or len(text) > _CONTENT_LENGTH_DIGITS:
        raise HttpError(400, "malformed Content-Length")
    length = int(text)
    if length > max_body:
        raise HttpError(413, f"body larger than {max_body} bytes")
    return length


def _wants_continue(request: Request, length: int, have: int) -> bool:
    expect = request.header("expect")
    if expect is None:
        return False
    if expect.lower() != "100-continue":
        raise HttpError(417, "only Expect: 100-continue is understood")
    return request.version == "HTTP/1.1" and length > have
