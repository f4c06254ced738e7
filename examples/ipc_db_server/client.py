"""Client compartments: each may start TCP clients and use them, nothing else.

They speak HTTP with a raw socket (:func:`http_request`): no DNS (the host must be an IP
literal), no proxy settings, no files. On kernels with Landlock ABI >= 4 the seal also
pins TCP connect to the board's port, so a compromised client cannot reach any other
service, even on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Protocol

from compartments import RuleSet, compartment
from compartments._policy._landlock import abi_version
from compartments.rulesets import Networking, Time

__all__ = ["MAX_RESPONSE", "ReadClient", "WriteClient", "client_rules", "http_request"]

MAX_RESPONSE = 4 * 1024 * 1024
LANDLOCK_NET_ABI = 4  # the first Landlock ABI that polices TCP ports


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection: (status, headers, body)."""
    ipaddress.ip_address(host)  # an IP literal: resolving names needs files and sockets
    fields = {"Host": f"{host}:{port}", "Connection": "close", **(headers or {})}
    if body or method in ("POST", "PUT"):
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        received = bytearray()
        while len(received) <= MAX_RESPONSE and not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return parse_response(bytes(received))


def _complete(data: bytearray) -> bool:
    """Head and Content-Length bytes of body received (peers may keep the line open)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    for line in bytes(data[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(data) - end - 4 >= int(value)
    return False


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        raise ConnectionError(f"incomplete HTTP response ({len(data)} bytes)")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ConnectionError(f"not an HTTP/1.x response: {status_line!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        body = body[: int(length)]
    return int(rest[:3]), headers, body


class _HasPort(Protocol):
    @property
    def port(self) -> int: ...


def client_rules(client: _HasPort) -> list[RuleSet]:
    """Start TCP clients (socket+connect) and use them (send/recv/poll/close)."""
    networking = Networking.nothing().allow_start_tcp_clients().allow_running_tcp_clients()
    if abi_version() >= LANDLOCK_NET_ABI:
        networking = networking.allow_tcp_connect_port(client.port)
    return [networking, Time.nothing().allow_gettime()]


class _Client:
    def __init__(self, host: str, port: int) -> None:
        ipaddress.ip_address(host)
        self.host = host
        self.port = port

    def _request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        status, _, answer = http_request(self.host, self.port, method, path, body)
        return status, answer


@compartment(rules=client_rules, name="WriteClient")
class WriteClient(_Client):
    """POSTs messages to /write."""

    def post(self, message: str) -> str:
        status, answer = self._request("POST", "/write", message.encode("utf-8"))
        text = answer.decode("utf-8", errors="replace")
        if status != 200:
            raise ValueError(f"POST /write answered {status}: {text.strip()}")
        return text


@compartment(rules=client_rules, name="ReadClient")
class ReadClient(_Client):
    """GETs /read and checks it."""

    def read(self) -> str:
        status, answer = self._request("GET", "/read")
        if status != 200:
            raise ValueError(f"GET /read answered {status}")
        return answer.decode("utf-8")

    def check(self, expected: str) -> str:
        """The board's text if it is exactly ``expected``; ValueError otherwise."""
        text = self.read()
        if text != expected:
            raise ValueError(f"/read returned {text!r}, expected {expected!r}")
        return text
